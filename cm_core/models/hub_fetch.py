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
- Time limits: every connection gives up after :func:`hub_timeout` seconds of silence, and a
  whole fetch, the wait for another download of the same model included, after
  :func:`fetch_deadline`; either way the error says why, and nothing complete-looking is left.
- Free disk space is checked first (``$CM_MIN_FREE_GB`` kept free, default 1), so anonymous
  visitors of a Space cannot fill its disk.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoints import HUB_CONFIGS, HUB_WEIGHTS, CheckpointError, checkpoint_dir, first_line, is_available, local_path
from .download import Progress, fetch_original
from .registry import ModelSpec

DiskFree = Callable[[Path], int]


def hub_timeout() -> float:
    """Seconds a Hub connection may stay silent (connect, listing, each read): ``$CM_HUB_TIMEOUT_S``,
    default 20. It also sets huggingface_hub's download read timeout and its metadata timeout
    where ``HF_HUB_DOWNLOAD_TIMEOUT`` / ``HF_HUB_ETAG_TIMEOUT`` are not set."""
    return _env_seconds("CM_HUB_TIMEOUT_S", 20.0)


def fetch_deadline() -> float:
    """Seconds one fetch may take in all, lock wait included: ``$CM_FETCH_DEADLINE_S``, default
    1800 (a 1.2 GB LSUN model at 1 MB/s)."""
    return _env_seconds("CM_FETCH_DEADLINE_S", 1800.0)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        v = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not v > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return v


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
        info = HfApi(endpoint=_endpoint()).model_info(repo, files_metadata=True, timeout=hub_timeout())
        wanted = set(HUB_CONFIGS + HUB_WEIGHTS)
        return str(info.sha), [(f.rfilename, f.size) for f in info.siblings or [] if f.rfilename in wanted]

    def download(self, repo: str, filename: str, revision: str, on_bytes: Callable[[int], None]) -> Path:
        """One file into the Hub cache (atomic: ``.incomplete`` then rename); ``on_bytes(n)`` as it goes."""
        from huggingface_hub import hf_hub_download
        _set_hub_timeouts()
        kw = dict(revision=revision, endpoint=_endpoint(), etag_timeout=hub_timeout())
        try:
            return Path(hf_hub_download(repo, filename, tqdm_class=_byte_bar(on_bytes), **kw))
        except TypeError:  # a huggingface_hub without tqdm_class: progress moves per file
            return Path(hf_hub_download(repo, filename, **kw))


def _endpoint() -> str | None:
    """``$HF_ENDPOINT`` as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def _set_hub_timeouts() -> None:
    """huggingface_hub's read and metadata timeouts from :func:`hub_timeout`, unless set by their
    own variables (it reads those once, at import)."""
    from huggingface_hub import constants
    for var in ("HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT"):
        if var not in os.environ and hasattr(constants, var):
            setattr(constants, var, int(max(1.0, hub_timeout())))


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
def model_lock(name: str, folder: Path, deadline: float | None = None) -> Iterator[None]:
    """Held while ``name`` downloads into ``folder``: by this process's threads and other
    processes; waiting for it ends at ``deadline`` (``time.monotonic()``; default: the fetch deadline)."""
    from filelock import FileLock, Timeout
    deadline = deadline if deadline is not None else time.monotonic() + fetch_deadline()
    locks = folder / ".cm-locks"
    locks.mkdir(parents=True, exist_ok=True)
    busy = CheckpointError(f"another download of {name} is still running (lock {locks}); try again later")
    if not _THREAD_LOCKS[name].acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise busy
    try:
        try:
            with FileLock(str(locks / f"{name}.lock"), timeout=max(0.0, deadline - time.monotonic())):
                yield
        except Timeout:
            raise busy from None
    finally:
        _THREAD_LOCKS[name].release()


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


def _until(deadline: float, name: str, progress: Progress | None) -> Progress:
    """``progress`` that raises once ``deadline`` has passed (called as the bytes arrive, so a
    transfer that trickles stops there; a silent one stops at the read timeout)."""
    def report(done: int, total: int | None) -> None:
        if time.monotonic() > deadline:
            raise CheckpointError(f"the download of {name} did not finish within its deadline "
                                  f"(CM_FETCH_DEADLINE_S = {fetch_deadline():g} s); choose the model again "
                                  "to resume")
        if progress is not None:
            progress(done, total)
    return report


def ensure_local(spec: ModelSpec, progress: Progress | None = None, expected_bytes: int | None = None,
                 client: HubClient | None = None, disk_free: DiskFree = free_bytes,
                 deadline: float | None = None) -> bool:
    """Make ``spec`` loadable without a download; returns whether this call downloaded anything.

    CD/CT with a Hub repo: :func:`fetch_hub_files`; EDM teachers: the original ``.pt``. Embedded
    models are always present. The whole fetch, waiting for another one of the same model
    included, ends by ``deadline`` (``time.monotonic()``; default :func:`fetch_deadline` from now)
    with a ``CheckpointError``; every connection times out after :func:`hub_timeout` of silence.
    """
    if spec.embedded or is_available(spec):
        return False
    if not spec.url and not spec.hub_repo:
        raise CheckpointError(f"{spec.name} cannot be downloaded")
    deadline = deadline if deadline is not None else time.monotonic() + fetch_deadline()
    dest = hub_cache_dir() if spec.hub_repo else checkpoint_dir()
    report = _until(deadline, spec.name, progress)
    with model_lock(spec.name, dest, deadline):
        if is_available(spec):  # another visitor fetched it while we waited
            return False
        if spec.hub_repo:
            fetch_hub_files(spec, report, expected_bytes, client, disk_free)
        else:
            check_disk(dest, spec.size_bytes or expected_bytes or 0, disk_free)
            fetch_original(spec, progress=report, timeout=hub_timeout())
    if not is_available(spec):
        raise CheckpointError(f"{spec.name}: the download finished but {local_path(spec)} / "
                              f"{spec.hub_repo} is still incomplete")
    return True
