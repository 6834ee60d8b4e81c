"""Model downloads that run beside the requests: one per model, shared by everyone who waits for
it, and ended by a deadline.

A request for a model that must be fetched first (a Space, ``CM_AUTO_FETCH=1``) starts the
download in a background thread (:func:`start_fetch`) and waits for it (:func:`wait_fetch`),
holding no compute slot: requests for models on disk are served meanwhile. A second visitor of the
same model joins the running download and sees its progress. Waiting ends when the download
does, when the waiter's client leaves (its progress callback raises
:class:`~cm_core.service.progress.Cancelled`; the download goes on for the others), or at the
fetch deadline (:func:`cm_core.models.hub_fetch.fetch_deadline`) plus one connection timeout,
whatever the download thread is doing. The batched generate does not wait:
:func:`fetch_problem` tells it what to say instead, with the real cause of a failed download.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..models.checkpoints import CheckpointError
from ..models.hub_fetch import ensure_local, fetch_deadline, hub_timeout
from ..models.registry import ModelSpec
from .progress import Progress
from .sizes import human_size, model_bytes

POLL_S = 0.2  # how often a waiter reports progress and checks on its client
FAILURE_SHOWN_S = 300.0  # how long the batched generate reports a failed download's cause
RETRY_AFTER_S = 30.0  # a batch retries a failed download after this long (a visitor who waits: at once)


@dataclass
class FetchJob:
    """One download of model ``name`` in a background thread; ``done`` is set when it ends."""

    name: str
    deadline: float  # time.monotonic() by which it must end
    done: threading.Event = field(default_factory=threading.Event)
    fraction: float = 0.0
    desc: str = "connecting to the Hub"
    error: str | None = None
    downloaded: bool = False
    ended: float = 0.0

    def report(self, done: int, total: int | None) -> None:
        self.fraction = done / total if total else 0.0
        self.desc = f"downloading {self.name}: {human_size(done)} of {human_size(total)}"


_LOCK = threading.Lock()
_JOBS: dict[str, FetchJob] = {}  # the latest job per model name (bounded by the registry)


def start_fetch(spec: ModelSpec, retry_after: float = 0.0) -> FetchJob:
    """The running download of ``spec``, or a new one started in a background thread; a download
    that failed less than ``retry_after`` seconds ago is returned as it is (with its error)."""
    with _LOCK:
        job = _JOBS.get(spec.name)
        if job is not None and not job.done.is_set():
            return job
        if job is not None and job.error is not None and time.monotonic() - job.ended < retry_after:
            return job
        job = FetchJob(spec.name, time.monotonic() + fetch_deadline())
        _JOBS[spec.name] = job
    threading.Thread(target=_run, args=(job, spec), name=f"fetch-{spec.name}", daemon=True).start()
    return job


def _run(job: FetchJob, spec: ModelSpec) -> None:
    try:
        job.downloaded = ensure_local(spec, job.report, expected_bytes=model_bytes(spec, on_disk_only=False),
                                      deadline=job.deadline)
        job.fraction = 1.0
    except Exception as e:  # noqa: BLE001 - every cause reaches the waiters as a message
        job.error = str(e) if isinstance(e, (CheckpointError, ValueError)) else \
            f"the download of {spec.name} failed ({type(e).__name__}: {e})"
    finally:
        job.ended = time.monotonic()
        job.done.set()


def wait_fetch(job: FetchJob, progress: Progress | None = None) -> bool:
    """Wait for ``job``, reporting its progress; returns whether it downloaded anything.

    Raises ``CheckpointError`` with the download's own error, or when it is still running past
    its deadline plus one connection timeout (a silent Hub: the thread is left to end itself)."""
    give_up = job.deadline + hub_timeout()
    while not job.done.wait(POLL_S):
        if progress is not None:
            progress(job.fraction, job.desc)
        if time.monotonic() > give_up:
            raise CheckpointError(f"the download of {job.name} did not finish within "
                                  f"{fetch_deadline():g} s (CM_FETCH_DEADLINE_S); last state: {job.desc}. "
                                  "The Hub may be unreachable; try again later")
    if job.error is not None:
        raise CheckpointError(job.error)
    if progress is not None:
        progress(job.fraction, job.desc)  # the last state, also of a download shorter than a poll
    return job.downloaded


def fetch_problem(name: str) -> str | None:
    """What a request that cannot wait should say about ``name``'s download: that it is running
    (with its progress) or why it recently failed; None when there is neither."""
    with _LOCK:
        job = _JOBS.get(name)
    if job is None:
        return None
    if not job.done.is_set():
        return (f"{name} is being downloaded ({job.desc}, {100 * job.fraction:.0f}%); "
                "try again when it is done")
    if job.error is not None and time.monotonic() - job.ended < FAILURE_SHOWN_S:
        return job.error
    return None
