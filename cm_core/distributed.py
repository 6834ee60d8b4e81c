"""Multi-process sampling helpers (``torchrun --nproc_per_node N``, one or several nodes).

Ranks sample disjoint per-image seeds; rank 0 gathers everything with ``gather_object`` over
the process group (gloo on CPU, NCCL-free), so no shared filesystem is needed across nodes.
"""
from __future__ import annotations

import numpy as np
import torch.distributed as dist


def _ensure_group(world: int) -> bool:
    if world <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return True


def gather_to_rank0(seeds: np.ndarray, images: np.ndarray, labels: np.ndarray, rank: int,
                    world: int, tag: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate every rank's (seeds, images, labels) on rank 0; other ranks get their own back."""
    if not _ensure_group(world):
        return seeds, images, labels
    parts: list | None = [None] * world if rank == 0 else None
    dist.gather_object((seeds, images, labels), parts, dst=0)
    dist.barrier()
    if rank != 0:
        return seeds, images, labels
    assert parts is not None
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
