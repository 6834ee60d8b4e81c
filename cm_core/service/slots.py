"""Compute slots: how many requests run models at a time, whatever the web server lets in.

The app lets more requests past its queue than run at once, so that a request waiting for a
model download (which can take minutes) never holds up requests for models already on disk. The
work itself then takes one of ``$CM_CONCURRENCY`` slots (default 1). A request waiting for a slot
reports it through its progress callback, which raises
:class:`~cm_core.service.progress.Cancelled` when its client has left: a cancelled request stops
waiting, and a cancelled run gives its slot back within one network evaluation.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .progress import Progress
from .settings import concurrency

POLL_S = 0.1  # how often a waiting request checks on its client


class ComputeSlots:
    """At most ``n`` holders at a time; waiters are served in about the order they came."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._sem = threading.BoundedSemaphore(n)
        self._lock = threading.Lock()
        self.waiting = 0
        self.busy = 0

    @contextmanager
    def hold(self, progress: Progress | None = None) -> Iterator[None]:
        """Hold a slot for the ``with`` block; while waiting, ``progress(0, "waiting ...")`` every
        :data:`POLL_S` seconds (it may raise ``Cancelled``, which gives up the wait)."""
        with self._lock:
            self.waiting += 1
        try:
            while not self._sem.acquire(timeout=POLL_S if progress is not None else None):
                progress(0.0, f"waiting for a free worker ({self.busy} busy, {self.waiting} waiting)")
        finally:
            with self._lock:
                self.waiting -= 1
        with self._lock:
            self.busy += 1
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1
            self._sem.release()


_SLOTS_LOCK = threading.Lock()
_SLOTS: ComputeSlots | None = None


def compute_slots() -> ComputeSlots:
    """The process-wide slots (``$CM_CONCURRENCY`` of them, read on first use)."""
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            _SLOTS = ComputeSlots(concurrency())
        return _SLOTS
