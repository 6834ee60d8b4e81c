"""Fetching a released model when it is chosen: on a Space (``$SPACE_ID``) or with ``CM_AUTO_FETCH=1``.

- CD and CT come from their ``openai/diffusers-*`` repo, only the files a load needs
  (:data:`HUB_CONFIGS` and one weights format, safetensors before ``.bin``), into the Hub cache
  (``$HF_HUB_CACHE``). ``hf_hub_download`` writes each file to ``blobs/<hash>.incomplete`` and
  renames it when complete, and :func:`hub_complete` counts a snapshot as present only when every
  needed file is in it, so a fetch cut off midway leaves nothing that looks complete.
- EDM teachers have no diffusers repo: their original ``.pt`` goes through
  :func:`cm_core.models.download.fetch_original` (``.part``, verified, renamed) into ``$CM_CHECKPOINT_DIR``.
- One download per model at a time: a lock file in the destination (other processes) and a
  thread lock (this process); whoever waited finds the model on disk and downloads nothing.
- Free disk space is checked first (``$CM_MIN_FREE_GB`` kept free, default 1), so anonymous
  visitors of a Space cannot fill its disk.
"""
from __future__ import annotations

import os
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoints import HUB_CONFIGS, HUB_WEIGHTS, CheckpointError, checkpoint_dir, first_line, is_available, local_path
from .download import Progress, fetch_original
from .registry import ModelSpec

LOCK_TIMEOUT_S = 3600.0
DiskFree = Callable[[Path], int]


def auto_fetch_enabled() -> bool:
    """``$CM_AUTO_FETCH``: ``1`` on, ``0`` off, unset/``auto`` = on when running on a Space."""
    raw = os.environ.get("CM_AUTO_FETCH", "auto").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    if raw not in ("", "auto"):
        raise ValueError(f"CM_AUTO_FETCH must be auto, 1 or 0, got {raw!r}")
    return bool(os.environ.get("SPACE_ID"))


def hub_cache_dir() -> Path:
    """The Hub cache that ``huggingface_hub`` uses now (``$HF_HUB_CACHE``, ``$HF_HOME/hub``)."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


class HubClient:
    """The two Hub calls a fetch makes; tests replace :data:`CLIENT` by a stand-in."""

    def files(self, repo: str) -> tuple[str, list[tuple[str, int | None]]]:
        """(commit, [(file, size in bytes)]) of the files of ``repo`` a load may need."""
        from huggingface_hub import HfApi
        info = HfApi().model_info(repo, files_metadata=True)
        wanted = set(HUB_CONFIGS + HUB_WEIGHTS)
        return str(info.sha), [(f.rfilename, f.size) for f in info.siblings or [] if f.rfilename in wanted]

    def download(self, repo: str, filename: str, revision: str, on_bytes: Callable[[int], None]) -> Path:
        """One file into the Hub cache (atomic: ``.incomplete`` then rename); ``on_bytes(n)`` as it goes."""
        from huggingface_hub import hf_hub_download
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, tqdm_class=_byte_bar(on_bytes)))
        except TypeError:  # a huggingface_hub without tqdm_class: progress moves per file
            return Path(hf_hub_download(repo, filename, revision=revision))


def _byte_bar(on_bytes: Callable[[int], None]) -> type:
    from tqdm.auto import tqdm

    class _Bar(tqdm):  # type: ignore[misc, valid-type]
        def update(self, n: float | None = 1) -> bool | None:
            on_bytes(int(n or 0))
            return super().update(n)
    return _Bar


CLIENT = HubClient()


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path`` (its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(dest: Path, need: int, disk_free: DiskFree = free_bytes) -> None:
    """Refuse a download of ``need`` bytes that would leave less than ``$CM_MIN_FREE_GB`` free."""
    reserve = int(float(os.environ.get("CM_MIN_FREE_GB", "1")) * 1e9)
    free = disk_free(dest)
    if free - need < reserve:
        raise CheckpointError(
            f"not enough disk space in {dest}: the download needs {need / 1e9:.2f} GB and "
            f"{reserve / 1e9:.1f} GB must stay free (CM_MIN_FREE_GB), but only {free / 1e9:.2f} GB "
            "are free; free some space, or point CM_CHECKPOINT_DIR / HF_HOME at a larger volume")


_THREAD_LOCKS: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


@contextmanager
def model_lock(name: str, folder: Path) -> Iterator[None]:
    """Held while ``name`` downloads into ``folder``: by this process's threads and other processes."""
    from filelock import FileLock, Timeout
    locks = folder / ".cm-locks"
    locks.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCKS[name]:
        try:
            with FileLock(str(locks / f"{name}.lock"), timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise CheckpointError(f"another download of {name} has held {locks} for over "
                                  f"{LOCK_TIMEOUT_S:.0f} s; try again later") from None


def fetch_hub_files(spec: ModelSpec, progress: Progress | None = None, expected_bytes: int | None = None,
                    client: HubClient | None = None, disk_free: DiskFree = free_bytes) -> None:
    """Download the configs and one weights file of ``spec.hub_repo`` (configs first)."""
    client = client or CLIENT
    repo = str(spec.hub_repo)
    try:
        commit, files = client.files(repo)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth
        raise CheckpointError(f"could not list {repo} on the Hub ({first_line(e)}); "
                              "check the network, or fetch it elsewhere into the Hub cache") from None
    names = {f for f, _ in files}
    weights = next((w for w in HUB_WEIGHTS if w in names), None)
    wanted = [(f, s) for f, s in files if f in HUB_CONFIGS] + [(f, s) for f, s in files if f == weights]
    total = sum(s or 0 for _, s in wanted) or expected_bytes or 0
    check_disk(hub_cache_dir(), total, disk_free)
    base = 0
    for name, size in wanted:
        got = 0

        def on_bytes(n: int) -> None:
            nonlocal got
            got += n
            if progress is not None:
                progress(base + got, total or None)
        try:
            client.download(repo, name, commit, on_bytes)
        except Exception as e:  # noqa: BLE001 - network, disk
            raise CheckpointError(f"download of {repo}/{name} failed ({first_line(e)}); "
                                  "choose the model again to resume") from None
        base += size or got


def ensure_local(spec: ModelSpec, progress: Progress | None = None, expected_bytes: int | None = None,
                 client: HubClient | None = None, disk_free: DiskFree = free_bytes) -> bool:
    """Make ``spec`` loadable without a download; returns whether this call downloaded anything.

    CD/CT with a Hub repo: :func:`fetch_hub_files`; EDM teachers: the original ``.pt``. Embedded
    models are always present.
    """
    if spec.embedded or is_available(spec):
        return False
    if not spec.url and not spec.hub_repo:
        raise CheckpointError(f"{spec.name} cannot be downloaded")
    dest = hub_cache_dir() if spec.hub_repo else checkpoint_dir()
    with model_lock(spec.name, dest):
        if is_available(spec):  # another visitor fetched it while we waited
            return False
        if spec.hub_repo:
            fetch_hub_files(spec, progress, expected_bytes, client, disk_free)
        else:
            check_disk(dest, spec.size_bytes or expected_bytes or 0, disk_free)
            fetch_original(spec, progress=progress, timeout=20.0)
    if not is_available(spec):
        raise CheckpointError(f"{spec.name}: the download finished but {local_path(spec)} / "
                              f"{spec.hub_repo} is still incomplete")
    return True
