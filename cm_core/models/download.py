"""Fetching released checkpoints: resumable, verified, atomic.

The original ``.pt`` goes to ``<checkpoint dir>/<name>.pt.part`` first (resumed with an HTTP
``Range`` request when a partial file exists), is checked against the server's length and the
registry's size / sha256 where recorded, and only then renamed to ``<name>.pt``: an interrupted
fetch never leaves a file that looks complete. Hub repos: :mod:`cm_core.models.hub_fetch`.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .checkpoints import CheckpointError, local_path, sha256_file, verify
from .registry import DataFile, ModelSpec

Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)
CHUNK = 1 << 20


def _open(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - fixed https URLs
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range not satisfiable: the part file is already complete
            return None
        raise CheckpointError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise CheckpointError(f"cannot reach {url} ({getattr(e, 'reason', e)}): this machine looks "
                              "offline; download the file elsewhere and copy it into the checkpoint "
                              "directory ($CM_CHECKPOINT_DIR)") from None


def _stream(resp, part: Path, start: int, progress: Progress | None) -> int:
    total = resp.headers.get("Content-Length")
    total_bytes = int(total) + start if total is not None else None
    if start and resp.status != 206:  # server ignored Range: start over
        start, total_bytes = 0, int(total) if total is not None else None
    done = start
    with open(part, "ab" if start else "wb") as f:
        while block := resp.read(CHUNK):
            f.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total_bytes)
    if total_bytes is not None and done != total_bytes:
        raise CheckpointError(f"{part}: download ended at {done} of {total_bytes} bytes; run the "
                              "same command again to resume")
    return done


def fetch_original(spec: ModelSpec | DataFile, dest_dir: Path | None = None, progress: Progress | None = None,
                   timeout: float = 60.0) -> Path:
    """Download ``spec.url`` to ``dest_dir/<filename>`` (default: the checkpoint directory): resume,
    verify, then rename atomically, holding a file lock so two processes never write one file."""
    from filelock import FileLock
    if not spec.url:
        raise CheckpointError(f"{spec.name} has no download URL (embedded models ship with the repo)")
    final = (dest_dir / str(spec.filename)) if dest_dir else local_path(spec)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.with_name(final.name + ".lock"))):
        if final.is_file():
            verify(final, spec)
            return final
        part = final.with_name(final.name + ".part")
        start = part.stat().st_size if part.is_file() else 0
        resp = _open(spec.url, start, timeout)
        if resp is not None:
            with resp:
                _stream(resp, part, start, progress)
        try:
            verify(part, spec)
        except CheckpointError:
            part.unlink(missing_ok=True)  # complete but wrong: the next run starts over
            raise
        os.replace(part, final)
    return final


def describe(path: Path) -> str:
    """``<path>: <size> MB, sha256 <hex>`` for the fetch script's summary."""
    return f"{path}: {path.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(path)}"
