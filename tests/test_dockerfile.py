"""The Dockerfile, parsed with Docker's own parser (the ``dockerfile`` package): ``docker build``
cannot run on the test machines, so check what the image would be instead."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

dockerfile = pytest.importorskip("dockerfile")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cmds() -> list:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def _all(cmds, name: str) -> list:
    return [c for c in cmds if c.cmd == name]


def _env(cmds) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in _all(cmds, "ENV"):
        env.update(zip(c.value[::2], c.value[1::2]))
    return env


def test_cuda_runtime_base_image(cmds):
    assert cmds[0].cmd == "FROM"
    image = cmds[0].value[0]
    assert image.startswith("nvidia/cuda:") and "runtime" in image and ":latest" not in image


def test_runs_as_a_non_root_user(cmds):
    users = _all(cmds, "USER")
    assert users and users[-1].value[0] not in ("root", "0")
    user = users[-1].value[0]
    assert any("useradd" in c.value[0] and user in c.value[0] for c in _all(cmds, "RUN"))
    # everything after the last USER (install, app) runs unprivileged; the CMD comes after it
    idx = cmds.index(users[-1])
    assert any(c.cmd == "CMD" for c in cmds[idx:])
    assert not any(c.cmd == "RUN" and "installations.sh" in c.value[0] for c in cmds[:idx])


def test_installs_with_the_same_script_as_a_fresh_install(cmds):
    runs = [shlex.split(c.value[0]) for c in _all(cmds, "RUN")]
    install = [r for r in runs if "installations.sh" in r]
    assert install == [["bash", "installations.sh"]]  # runtime only: no --dev
    copied = [v for c in _all(cmds, "COPY") for v in c.value[:-1]]
    assert "installations.sh" in copied and "requirements.txt" in copied
    # the script the image runs answers as documented (no install: --help and a wrong option)
    usage = subprocess.run(["bash", str(ROOT / "installations.sh"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--dev" in usage.stdout and "runtime" in usage.stdout
    wrong = subprocess.run(["bash", str(ROOT / "installations.sh"), "--gpu"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown option: --gpu" in wrong.stderr


def test_checkpoints_volume_port_and_environment(cmds):
    env = _env(cmds)
    vols = [v for c in _all(cmds, "VOLUME") for v in c.value]
    assert env["CM_CHECKPOINT_DIR"] in vols
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0" and env["GRADIO_SERVER_PORT"] == "7860"
    assert "7860" in [v for c in _all(cmds, "EXPOSE") for v in c.value]
    from cm_core.models.registry import REGISTRY
    assert env["CM_DEFAULT_MODEL"] in REGISTRY


def test_healthcheck_hits_the_http_server(cmds):
    hc = _all(cmds, "HEALTHCHECK")
    assert len(hc) == 1 and hc[0].value[0] == "CMD"
    probe = hc[0].value[1]
    assert "curl" in probe and "127.0.0.1" in probe and "GRADIO_SERVER_PORT" in probe
    assert any(f.startswith("--start-period") for f in hc[0].flags)
    runs = " ".join(c.value[0] for c in _all(cmds, "RUN"))
    assert "curl" in runs  # the probe's tool is installed


def test_command_starts_the_app(cmds):
    cmd = _all(cmds, "CMD")
    assert len(cmd) == 1 and cmd[0].json
    assert cmd[0].value[-1] == "app.py" and "python" in cmd[0].value[0]
    # the script the app tests start and talk to (tests/app_server.py)
    import app_server
    assert app_server.APP == ROOT / cmd[0].value[-1]


def test_dockerignore_keeps_the_image_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for p in (".git", ".venv", "checkpoints/*.pt"):
        assert p in ignored
    assert "checkpoints/embedded" not in ignored  # the embedded models ship in the image
