"""Whole-call CUDA graphs: :class:`GraphedCall` captures ``fn(*inputs)`` once and replays it.

Used by :meth:`cm_core.fast.FastDenoiser.run_graphed` for whole sampling and editing loops (one
graph per loop: batch shape, noise levels, editor).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class GraphedCall:
    """One CUDA graph of ``fn(*inputs) -> Tensor`` with static input buffers (CUDA only).

    ``fn`` must be free of host synchronisation and of shape-dependent Python branching on
    values (true of :func:`cm_core.edit_ops.sigma_loop` fed pre-drawn noise). ``None`` inputs stay ``None``. Calling
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
        self.inputs = [t.clone() if t is not None else None for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy inits (cuBLAS/cuDNN handles, workspaces) off-capture
            for _ in range(warmup_iters):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a background compile in another thread must not invalidate this capture
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.out = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        for dst, src in zip(self.inputs, inputs):
            if dst is not None:
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.out.clone()
