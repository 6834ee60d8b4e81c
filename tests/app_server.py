"""Start ``python app.py`` on a free loopback port, on random-weight embedded models.

Shared by the app API test and the browser test. The models are random networks of the embedded
architecture (never the trained weights), so the tests do not depend on training quality.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"  # what the tests launch: the Dockerfile's CMD and the README's command run it too
EMBEDDED = ("cd_digits32", "ct_digits32", "edm_digits32")


def random_embedded_models(folder: Path) -> Path:
    """Random-weight safetensors of the embedded models (with arch metadata) in ``folder``."""
    from safetensors.torch import save_file

    from cm_core.models.checkpoints import arch_meta
    from cm_core.models.network import build_unet
    from cm_core.models.registry import get_spec
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name in EMBEDDED:
        spec = get_spec(name)
        net = build_unet(spec.arch)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / str(spec.filename)),
                  metadata=arch_meta(spec.arch, spec.kind))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``python app.py`` in a subprocess; ``url`` once it answers HTTP."""

    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None,
                 real_models: bool | None = None, timeout: float = 120.0) -> None:
        """Launch and wait up to ``timeout`` seconds for the page. ``real_models``: the trained
        embedded weights (default: ``$CM_APP_TEST_REAL_MODELS=1``), else random-weight ones.
        Sets ``started`` (launch time) and ``start_seconds`` (launch until the page answers)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / "app.log"
        real = os.environ.get("CM_APP_TEST_REAL_MODELS") == "1" if real_models is None else real_models
        env = {**os.environ, "CM_EMBEDDED_DIR": "" if real else str(random_embedded_models(tmp / "embedded")),
               "CM_CHECKPOINT_DIR": str(tmp / "checkpoints"), "GRADIO_SERVER_PORT": str(self.port),
               "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
               "GRADIO_EXAMPLES_CACHE": str(tmp / "examples_cache"), "CM_TORCH_THREADS": "1",
               "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(extra_env or {})}
        if real:  # README screenshots, bench/first_image.py: trained weights
            env.pop("CM_EMBEDDED_DIR")
        env.pop("CM_DEFAULT_MODEL", None)
        env.pop("CM_SHARE", None)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(APP)], cwd=tmp, env=env,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        self.start_seconds = self._wait(timeout)

    def _wait(self, timeout: float = 120.0) -> float:
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"app.py did not answer on {self.url} in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def server_fixture():
    """A module-scoped pytest fixture ``server``: the session's shared :class:`AppServer` on the
    default settings (``shared_app`` in ``conftest.py``: one start, about 9 s, for every module
    that uses it). Use as ``server = server_fixture()``."""
    import pytest

    @pytest.fixture(scope="module")
    def server(shared_app):
        return shared_app
    return server
