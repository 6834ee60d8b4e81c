"""Whole-call CUDA graphs: :class:`GraphedCall` captures ``fn(*inputs)`` once and replays it.

:class:`GraphCache` keeps them for :meth:`cm_core.accel.fast.FastDenoiser.run_graphed`: whole
sampling and editing loops, one graph per loop (batch shape, noise levels, editor).

A capture is invalidated by a device-wide synchronisation from any thread (whatever the capture
mode), and ``torch.cuda.empty_cache`` asserts that no capture is under way. Inductor's autotuning
in the background compile thread synchronises the device many times. So, process-wide: one
capture at a time (:func:`capture_slot`), none while a compilation is under way
(:func:`compiling`; the caller then runs un-graphed and captures later), and
:func:`empty_cache` waits for a capture in progress.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, MutableMapping, Sequence

import torch

log = logging.getLogger("cm_core.accel.fast")  # the fast path's one logger

_CAPTURE = threading.Lock()  # held during a capture; guards _compiling
_compiling = 0  # compilations under way in this process


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Mark one compilation (e.g. a batch bucket's ``torch.compile``) as under way: waits for a
    capture in progress to end, and no capture starts until the compilation is done."""
    global _compiling
    with _CAPTURE:
        _compiling += 1
    try:
        yield
    finally:
        with _CAPTURE:
            _compiling -= 1


@contextlib.contextmanager
def capture_slot() -> Iterator[bool]:
    """``with capture_slot() as ok:`` capture inside only if ``ok`` (no compilation under way);
    holds the process-wide capture lock for the block."""
    with _CAPTURE:
        yield _compiling == 0


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is a CUDA out-of-memory error (typed, or a RuntimeError saying so)."""
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def empty_cache() -> None:
    """``torch.cuda.empty_cache()`` once no capture is under way (it must not run during one)."""
    if torch.cuda.is_available():
        with _CAPTURE:
            torch.cuda.empty_cache()


class GraphedCall:
    """One CUDA graph of ``fn(*inputs) -> Tensor`` with static input buffers (CUDA only).

    ``fn`` must be free of host synchronisation and of shape-dependent Python branching on
    values (true of :func:`cm_core.sampling.loop.sigma_loop` fed pre-drawn noise, as
    :func:`cm_core.sampling.runner.run_loop` runs it). ``None`` inputs stay ``None``. Calling
    copies the inputs into the static buffers, replays, and returns a clone of the output.
    Reusable for any device-only loop of fixed shapes, e.g. an editing loop.

    The graph replays raw device addresses: every tensor ``fn`` reads besides ``inputs`` (weights,
    a constant basis held by a closure) must outlive it. Holding ``fn`` keeps what its closure
    references alive; otherwise the caching allocator could hand a freed constant's memory to
    another tensor and a replay would silently read that.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None],
                 pool: tuple | None = None, warmup_iters: int = 2) -> None:
        self.fn = fn  # keeps closure-held constants (and so their device memory) alive
        # the inputs' device, made current: streams and the capture belong to it (cuda:1 too)
        self.device = next(t.device for t in inputs if t is not None)
        with torch.cuda.device(self.device):
            self.inputs = [t.clone() if t is not None else None for t in inputs]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # lazy inits (cuBLAS/cuDNN handles, workspaces) off-capture
                for _ in range(warmup_iters):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' (eager) work does not make this capture's API calls fail
            with torch.cuda.graph(self.graph, pool=pool, stream=torch.cuda.Stream(self.device),
                                  capture_error_mode="thread_local"):
                self.out = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        with torch.cuda.device(self.device):
            for dst, src in zip(self.inputs, inputs):
                if dst is not None:
                    dst.copy_(src, non_blocking=True)
            self.graph.replay()
            return self.out.clone()


class GraphCache:
    """The CUDA graphs of one model's whole loops, by ``(key, compiled)``, least recently used
    dropped first beyond :attr:`max_graphs` (each holds its outputs in the shared memory pool).

    ``stats`` (shared with the model's other counters) gets ``graph_replays``,
    ``graph_deferred`` (captures put off while a compilation ran) and ``graph_error`` (the first
    failed capture; graphs stay off from then on). ``enabled``: graphs on (CUDA only; a
    stand-in graph class can turn them on elsewhere in tests)."""

    max_graphs = 32

    def __init__(self, enabled: bool, stats: MutableMapping[str, object]) -> None:
        self.enabled = enabled
        self.stats = stats
        stats.update(graph_replays=0, graph_deferred=0, graph_error=None)
        self._graphs: OrderedDict[tuple, GraphedCall] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if enabled else None
        self._lock = threading.RLock()

    @property
    def active(self) -> bool:
        """Whether loops run as graphs: enabled, and no capture has failed."""
        return self.enabled and self.stats["graph_error"] is None

    def __len__(self) -> int:
        return len(self._graphs)

    def keys(self) -> list[tuple]:
        """The cached ``(key, compiled)`` pairs, least recently used first."""
        return list(self._graphs)

    def clear(self) -> None:
        with self._lock:
            self._graphs.clear()

    def run(self, key: Hashable, compiled: bool, fn: Callable[..., torch.Tensor],
            inputs: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``fn(*inputs)`` through the graph of ``(key, compiled)``, captured on first use; a plain
        call when graphs are off, a capture is put off or it failed."""
        if not self.active:
            return fn(*inputs)
        full = (key, compiled)
        with self._lock:  # replays (and their output clones) one at a time: graphs share a pool
            g = self._graphs.get(full)
            if g is not None:
                self._graphs.move_to_end(full)
            elif (g := self._capture(key, fn, inputs)) is not None:
                self._keep(full, g)
            if g is not None:
                self.stats["graph_replays"] += 1  # type: ignore[operator]
                return g(*inputs)
        return fn(*inputs)  # un-graphed, outside the locks

    def _capture(self, key: Hashable, fn: Callable[..., torch.Tensor],
                 inputs: Sequence[torch.Tensor | None]) -> GraphedCall | None:
        """A new graph of ``fn``, or None: a compilation is under way (captured on a later call)
        or the capture failed (graphs off for good). Out of memory is raised, graphs staying on,
        so that the caller's retry (the app's model cache evicts other models) can succeed."""
        with capture_slot() as free:
            if not free:
                self.stats["graph_deferred"] += 1  # type: ignore[operator]
                return None
            try:
                return GraphedCall(fn, inputs, self._pool)
            except Exception as e:  # noqa: BLE001 - run un-graphed from now on
                if is_oom(e):
                    raise
                self.stats["graph_error"] = f"{type(e).__name__}: {e}"
                log.warning("CUDA graph capture of %r failed, running without graphs: %s", key, e)
                return None

    def _keep(self, full: tuple, g: GraphedCall) -> None:
        """Cache ``g`` under ``(key, compiled)``, dropping the key's other (eager) graph and the
        least recently used graphs beyond ``max_graphs``."""
        for k in [k for k in self._graphs if k[0] == full[0]]:
            del self._graphs[k]
        self._graphs[full] = g
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)


@contextlib.contextmanager
def timed(device: torch.device) -> Iterator[dict]:
    """``with timed(dev) as t: ...`` then ``t["s"]``: wall seconds, synchronising CUDA around it."""
    res: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield res
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    res["s"] = time.perf_counter() - t0
