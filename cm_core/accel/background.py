"""One daemon thread that works through batch buckets while its owner keeps serving.

Both background jobs of the fast path use it: compiling buckets
(:class:`~cm_core.accel.compile_cache.BackgroundCompiler`) and planning them
(:class:`~cm_core.accel.plan_cache.BackgroundPlanner`).
"""
from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["BucketQueue"]


class BucketQueue:
    """Runs ``work(bucket)`` once per submitted bucket, smallest first, in one daemon thread
    called ``name``. The thread ends when the queue is empty (the next :meth:`submit` starts a
    new one), so an idle or evicted owner is not held alive by a sleeping thread. ``work`` must
    not raise (it reports its own failures)."""

    def __init__(self, work: Callable[[int], None], name: str) -> None:
        self._work, self.name = work, name
        self._seen: set[int] = set()
        self._queue: list[int] = []
        self._cv = threading.Condition()
        self.worker: threading.Thread | None = None
        self._busy = self._closed = False

    def submit(self, bucket: int) -> None:
        """Queue ``bucket`` unless it was submitted before or the queue is stopped."""
        with self._cv:
            if self._closed or bucket in self._seen:
                return
            self._seen.add(bucket)
            self._queue.append(bucket)
            self._queue.sort()
            if self.worker is None:
                self.worker = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.worker.start()
            self._cv.notify_all()

    def clear(self) -> None:
        """Drop the queued buckets (a bucket under way finishes)."""
        with self._cv:
            self._queue.clear()
            self._cv.notify_all()

    def stop(self) -> None:
        """Drop the queued buckets and accept no more; the thread ends after the current one."""
        with self._cv:
            self._closed = True
        self.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queue has drained; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._queue or self._closed:
                    self._queue.clear()
                    self.worker = None
                    self._cv.notify_all()
                    return
                bucket = self._queue.pop(0)
                self._busy = True
            try:
                self._work(bucket)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
