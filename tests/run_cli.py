"""``python -m cm_core ARGS`` run in the test process by click's test runner: the same command
object as the console entry, without the 4 s a subprocess spends importing torch."""
from __future__ import annotations

import subprocess


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command's exit code, stdout and stderr, as ``subprocess.run`` would report them."""
    from click.testing import CliRunner

    from cm_core.cli import main
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(["cm_core", *args], r.exit_code, r.stdout, r.stderr)
