"""Fetching against a loopback HTTP server: resume, verification, atomic rename."""
import dataclasses
import hashlib
import http.server
import threading

import pytest

from cm_core.models.checkpoints import CheckpointError
from cm_core.models.download import fetch_original
from cm_core.models.registry import get_spec

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_at: int | None = None  # drop the connection after this many bytes (simulated interruption)

    def do_GET(self):  # noqa: N802 - http.server API
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_at is not None:
            body = body[: self.cut_at]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/cd_imagenet64_l2.pt"
    srv.shutdown()
    _Handler.cut_at = None


def _spec(url, **kw):
    return dataclasses.replace(get_spec("cd_imagenet64_l2"), url=url, **kw)


def test_interrupted_fetch_never_looks_complete_then_resumes(server, tmp_path):
    _Handler.cut_at = 300_000
    with pytest.raises(CheckpointError, match="resume"):
        fetch_original(_spec(server), tmp_path)
    assert not (tmp_path / "cd_imagenet64_l2.pt").exists()
    assert (tmp_path / "cd_imagenet64_l2.pt.part").stat().st_size == 300_000
    _Handler.cut_at = None
    seen = []
    path = fetch_original(_spec(server), tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "cd_imagenet64_l2.pt.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and seen[0][0] > 300_000


def test_checksum_mismatch_is_refused(server, tmp_path):
    spec = _spec(server, sha256="0" * 64, size_bytes=len(PAYLOAD))
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_original(spec, tmp_path)
    assert not (tmp_path / "cd_imagenet64_l2.pt").exists()
    good = _spec(server, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size_bytes=len(PAYLOAD))
    assert fetch_original(good, tmp_path).read_bytes() == PAYLOAD


def test_offline_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="offline"):
        fetch_original(_spec("http://127.0.0.1:9/none.pt"), tmp_path, timeout=2)


def test_evaluation_files_fetch_the_same_way_and_check_the_hash_their_name_carries(server, tmp_path):
    from cm_core.models.registry import INCEPTION_WEIGHTS
    bad = dataclasses.replace(INCEPTION_WEIGHTS, url=server, sha256_prefix="00000000")
    with pytest.raises(CheckpointError, match="fetch --ref inception"):
        fetch_original(bad, tmp_path)
    assert not (tmp_path / INCEPTION_WEIGHTS.filename).exists()
    good = dataclasses.replace(bad, sha256_prefix=hashlib.sha256(PAYLOAD).hexdigest()[:8])
    assert fetch_original(good, tmp_path).read_bytes() == PAYLOAD


def test_a_fetched_reference_batch_that_is_not_one_is_deleted(server, tmp_path, monkeypatch):
    from cm_core.models import registry
    from run_cli import run_cli
    monkeypatch.setitem(registry.REFERENCES, "imagenet64",
                        dataclasses.replace(registry.REFERENCES["imagenet64"], url=server))
    res = run_cli("fetch", "--ref", "imagenet64", "--dir", str(tmp_path))
    assert res.returncode == 1 and "not a readable .npz" in res.stderr and "fetch --ref imagenet64" in res.stderr
    assert not (tmp_path / "VIRTUAL_imagenet64_labeled.npz").exists()
