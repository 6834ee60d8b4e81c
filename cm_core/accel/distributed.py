"""Multi-process sampling helpers (``torchrun --nproc_per_node N``, one or several nodes).

Image ``i`` of a run belongs to rank ``i % world`` (strided sharding; its seed is ``seed + i``
whatever the rank). Rank 0 gathers every rank's uint8 images in fixed-size chunks with
``torch.distributed.gather`` over gloo (TCP, so no shared filesystem across nodes and no NCCL
needed) and places them at their global index: rank 0 holds the final uint8 array plus one
chunk per rank, other ranks only their own shard. ``gather_object`` (pickling a whole shard at
once, twice its size in RAM) is avoided on purpose for 50,000-image runs.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

CHUNK = 256  # images per rank per gather round


def rank_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from the torchrun environment, (0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes ``cuda:$LOCAL_RANK`` so each process has its own GPU."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    return device


def _ensure_group(world: int, backend: str = "gloo") -> bool:
    if world <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return True


def init_group(device: torch.device) -> bool:
    """Join torchrun's process group (NCCL for CUDA devices, gloo otherwise; several nodes
    through its rendezvous). False, and nothing done, in a single process."""
    return _ensure_group(rank_world()[1], "nccl" if device.type == "cuda" else "gloo")


def shard_size(total: int, rank: int, world: int) -> int:
    """How many of ``range(total)`` rank ``rank`` owns under strided sharding."""
    return len(range(rank, total, world))


def gather_strided(images: np.ndarray, labels: np.ndarray, total: int, rank: int, world: int,
                   chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Reassemble strided shards on rank 0: returns ([total, ...] images, [total] labels) in
    global index order there; other ranks get their own shard back. ``images``: [n_rank, ...]
    (uint8 NHWC images, or any numeric rows such as features), ``labels``: [n_rank] int64, where ``n_rank = shard_size(total, rank, world)``."""
    if not _ensure_group(world):
        return images, labels
    shape = images.shape[1:]
    full = np.empty((total, *shape), images.dtype) if rank == 0 else None
    full_lab = np.zeros(total, np.int64) if rank == 0 else None
    for start in range(0, shard_size(total, 0, world), chunk):
        img = torch.zeros((chunk, *shape), dtype=torch.from_numpy(images[:0]).dtype)
        lab = torch.zeros(chunk, dtype=torch.int64)
        mine = images[start:start + chunk]
        img[:len(mine)] = torch.from_numpy(np.ascontiguousarray(mine))
        lab[:len(mine)] = torch.from_numpy(labels[start:start + chunk])
        bufs = [torch.empty_like(img) for _ in range(world)] if rank == 0 else None
        lbufs = [torch.empty_like(lab) for _ in range(world)] if rank == 0 else None
        dist.gather(img, bufs, dst=0)
        dist.gather(lab, lbufs, dst=0)
        if rank == 0:
            assert bufs is not None and lbufs is not None and full is not None
            for q in range(world):
                idx = np.arange(q + start * world, total, world)[:chunk]
                full[idx] = bufs[q][:len(idx)].numpy()
                full_lab[idx] = lbufs[q][:len(idx)].numpy()
    dist.barrier()
    if rank == 0:
        return full, full_lab  # type: ignore[return-value]
    return images, labels

