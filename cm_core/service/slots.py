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
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..accel.cpu_malloc import trim_heap
from .progress import Progress
from .settings import concurrency

POLL_S = 0.1  # how often a waiting request checks on its client


class ComputeSlots:
    """At most ``n`` holders at a time; waiters are served in about the order they came.

    ``on_idle`` runs once the slots have stayed free, with nobody waiting, for ``idle_s`` seconds
    (in a timer thread): the process-wide slots give the allocator's free memory back then."""

    def __init__(self, n: int, on_idle: Callable[[], object] | None = None, idle_s: float = 1.0) -> None:
        self.n = n
        self._sem = threading.BoundedSemaphore(n)
        self._lock = threading.Lock()
        self.waiting = 0
        self.busy = 0
        self._on_idle, self._idle_s = on_idle, idle_s
        self._generation = 0  # bumped by every release: a timer of an older one does nothing

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
                self._generation += 1
                generation, idle = self._generation, self.busy == 0 and self.waiting == 0
            self._sem.release()
            if idle and self._on_idle is not None:
                timer = threading.Timer(self._idle_s, self._still_idle, args=(generation,))
                timer.daemon = True
                timer.start()

    def _still_idle(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self.busy or self.waiting:
                return
        self._on_idle()  # type: ignore[misc]


_SLOTS_LOCK = threading.Lock()
_SLOTS: ComputeSlots | None = None


def compute_slots() -> ComputeSlots:
    """The process-wide slots (``$CM_CONCURRENCY`` of them, read on first use); when they have been
    idle for a second, the heap's free memory goes back to the system
    (:func:`cm_core.accel.cpu_malloc.trim_heap`), so a server's memory levels off."""
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            _SLOTS = ComputeSlots(concurrency(), on_idle=trim_heap)
        return _SLOTS
