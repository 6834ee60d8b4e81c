"""``python -m cm_core sample``: images to a PNG grid or an .npz, on one process or under torchrun."""
from __future__ import annotations

import torch

from ..accel.distributed import gather_strided, local_device, rank_world
from ..models.checkpoints import load_denoiser, pick_device
from ..models.registry import ModelSpec, get_spec
from .generate import SampleSettings, sample_shard, write_samples
from .schedule import is_sigmas, parse_sigmas, parse_ts


def settings_from_options(spec: ModelSpec, num_evals: int, ts: str | None, grid_size: int | None,
                          heun_steps: int | None, dropout: float) -> SampleSettings:
    """The sampling settings of the command-line options: ``--ts`` as step indices
    ("0,22,39" or "0,106,200/201") or noise levels ("sigmas: 80, 40, 20, 10, 5"), else ``num_evals``."""
    if is_sigmas(ts):
        return SampleSettings(sigmas=parse_sigmas(str(ts), spec.sigma_min, spec.sigma_max), dropout=dropout)
    ts_v, grid = parse_ts(ts, grid_size or spec.grid_size)
    return SampleSettings(num_evals=num_evals, ts=ts_v, grid_size=grid, heun_steps=heun_steps, dropout=dropout)


def run_sample_command(model: str, checkpoint: str | None, num_evals: int, ts: str | None,
                       grid_size: int | None, heun_steps: int | None, seed: int, class_label: int | None,
                       num: int, num_samples: int | None, batch_size: int, dropout: float,
                       device: str | None, dtype: str, out: str, fast: bool | None = None,
                       compile: bool | None = None) -> None:
    """The ``sample`` command; under ``torchrun`` each rank samples its share of the seeds.

    Image ``i`` (0 <= i < total) has seed ``seed + i`` and goes to rank ``i % world``; rank 0
    gathers the uint8 images in chunks and writes them in seed order, so the file does not
    depend on the number of processes or the batch size. ``fast``: use :func:`cm_core.accel.entry.optimize`
    (default: on CUDA only; it then picks its own dtype, ``dtype`` is used when not float32);
    ``compile``: torch.compile in fast mode (default: on CUDA only).
    """
    spec = get_spec(model)
    total = num_samples or num
    if total < 1 or batch_size < 1:
        raise ValueError("--n/--num-samples and --batch-size must be >= 1")
    settings = settings_from_options(spec, num_evals, ts, grid_size, heun_steps, dropout)
    rank, world = rank_world()
    dev = local_device(pick_device(device))
    fast = dev.type == "cuda" if fast is None else fast
    den = load_denoiser(checkpoint or model, arch=spec.arch, kind=spec.kind, device=dev,
                        dtype=torch.float32 if fast else getattr(torch, dtype))
    if fast:
        from ..accel.entry import optimize
        den = optimize(den, dtype="auto" if dtype == "float32" else dtype,
                       compile="auto" if compile is None else compile, warm_buckets=(batch_size,))
    imgs, labs = sample_shard(den, spec, seed, range(rank, total, world), settings,
                              class_label, batch_size, progress=rank == 0)
    arr, lab = gather_strided(imgs, labs, total, rank, world)
    if rank == 0:
        write_samples(out, arr, lab)
