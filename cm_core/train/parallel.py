"""Data-parallel plumbing for training under ``torchrun``: DDP wrapping, sums across ranks and
broadcasting a resumed state from rank 0 (which alone reads and writes checkpoints, so several
nodes need no shared filesystem)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel when several processes run, else itself."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=128)


def sum_across(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over all ranks (a copy; itself in a single process)."""
    out = value.clone()
    if active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_state(nets: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
                    extra: dict) -> dict:
    """Copy rank 0's network weights, optimizer moments and ``extra`` (small picklable values,
    e.g. the completed step and grad-scaler state) to every rank; returns rank 0's ``extra``."""
    if not active():
        return extra
    params = [p for g in opt.param_groups for p in g["params"]]
    steps = {i: float(opt.state[p]["step"]) for i, p in enumerate(params) if p in opt.state} \
        if dist.get_rank() == 0 else None
    box = [extra, steps]
    dist.broadcast_object_list(box, src=0)
    extra, steps = box
    for net in nets.values():
        for t in net.state_dict().values():
            dist.broadcast(t, src=0)
    for i, step in sorted(steps.items()):
        p = params[i]
        if dist.get_rank() != 0:
            opt.state[p] = {"step": torch.tensor(step), "exp_avg": torch.zeros_like(p),
                            "exp_avg_sq": torch.zeros_like(p)}
        dist.broadcast(opt.state[p]["exp_avg"], src=0)
        dist.broadcast(opt.state[p]["exp_avg_sq"], src=0)
    return extra
