"""High-level generation over a registry spec: seeds, batching, labels, output files.

Used by the CLI and the app. Image ``i`` of a request with seed ``s`` always uses per-image seed
``s + i`` (its noise, its multistep noise, its dropout masks and, when no class is given, its
random class label), so results do not depend on the batch size or on how a run is sharded.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .denoiser import Denoiser
from .registry import ModelSpec
from .sampling import heun, initial_noise, make_generators, multistep, onestep
from .schedule import pick_ts, validate_ts


_LABEL_STREAM = 0x2545F4914F6CDD1D  # random class labels: a stream apart from the noise seeds


@dataclass(frozen=True)
class SampleSettings:
    """What to sample: ``steps`` evaluations (Heun steps for EDM) or explicit ``ts`` on ``grid_steps``."""

    steps: int = 1
    ts: tuple[int, ...] | None = None
    grid_steps: int | None = None
    dropout: float = 0.0

    def resolved_ts(self, spec: ModelSpec) -> tuple[list[int], int] | None:
        """(ts, grid) for multistep CM sampling, or None for one-step / Heun."""
        grid = self.grid_steps or spec.steps
        if self.ts is not None:
            validate_ts(self.ts, grid)
            return list(self.ts), grid
        if spec.kind == "edm" or self.steps == 1:
            return None
        return pick_ts(self.steps, grid, spec.ts if grid == spec.steps else ()), grid


def labels_for(spec: ModelSpec, seeds: Sequence[int], class_label: int | None) -> torch.Tensor | None:
    """Class labels: ``class_label`` for all images, else one drawn from each image's own seed."""
    if not spec.class_cond:
        return None
    n = spec.arch.num_classes
    if class_label is not None:
        if not 0 <= class_label < n:
            raise ValueError(f"class label must be in [0, {n - 1}], got {class_label}")
        return torch.full((len(seeds),), class_label, dtype=torch.long)
    return torch.tensor([int(torch.randint(n, (1,), generator=torch.Generator().manual_seed((s + _LABEL_STREAM) % 2 ** 63)))
                         for s in seeds], dtype=torch.long)


@torch.no_grad()
def sample_batch(den: Denoiser, spec: ModelSpec, seeds: Sequence[int], settings: SampleSettings,
                 labels: torch.Tensor | None, callback: Callable[[dict], None] | None = None
                 ) -> torch.Tensor:
    """Images [B, 3, R, R] in [-1, 1] for per-image ``seeds`` on ``den``'s device."""
    dev = next(den.parameters()).device
    gens = [g for s in seeds for g in make_generators(s, 1, dev)]
    drop = [g for s in seeds for g in make_generators(s, 1, dev, "dropout")] if settings.dropout else None
    den.dropout = settings.dropout
    r = spec.resolution
    x_T = initial_noise((len(seeds), 3, r, r), gens, spec.sigma_max, device=dev)
    labels = labels.to(dev) if labels is not None else None
    if spec.kind == "edm":
        return heun(den, x_T, max(settings.steps, 2), labels, drop, callback)
    plan = settings.resolved_ts(spec)
    if plan is None:
        return onestep(den, x_T, labels, dropout_rng=drop, callback=callback)
    return multistep(den, x_T, plan[0], plan[1], gens, labels, drop, callback)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor -> uint8 NHWC array (the original's ``((x + 1) * 127.5).clamp(0, 255)``)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path: str | Path) -> None:
    """Save uint8 NHWC images as a near-square PNG grid."""
    from PIL import Image
    n, h, w, c = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    Image.fromarray(grid).save(path)


def _ts_arg(ts: str | None) -> tuple[int, ...] | None:
    if ts is None:
        return None
    try:
        return tuple(int(t) for t in ts.replace(" ", "").split(",") if t)
    except ValueError:
        raise ValueError(f"--ts expects comma-separated integers like 0,22,39, got {ts!r}") from None


def run_sample_command(model: str, checkpoint: str | None, steps: int, ts: str | None,
                       grid_steps: int | None, seed: int, class_label: int | None, num: int,
                       num_samples: int | None, batch_size: int, dropout: float, device: str | None,
                       dtype: str, out: str) -> None:
    """The ``sample`` CLI command; under ``torchrun`` each rank samples its share of the seeds."""
    from tqdm import tqdm

    from .checkpoints import load_denoiser
    from .registry import get_spec
    spec = get_spec(model)
    total = num_samples or num
    if total < 1 or batch_size < 1:
        raise ValueError("--n/--num-samples and --batch-size must be >= 1")
    settings = SampleSettings(steps=steps, ts=_ts_arg(ts), grid_steps=grid_steps, dropout=dropout)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    den = load_denoiser(checkpoint or model, arch=spec.arch, kind=spec.kind, device=device,
                        dtype=getattr(torch, dtype))
    mine = list(range(seed + rank, seed + total, world))
    imgs, labs = [], []
    for i in tqdm(range(0, len(mine), batch_size), desc=f"sampling (rank {rank}/{world})",
                  disable=rank != 0):
        seeds = mine[i:i + batch_size]
        labels = labels_for(spec, seeds, class_label)
        imgs.append(to_uint8(sample_batch(den, spec, seeds, settings, labels)))
        labs.append(labels.numpy() if labels is not None else np.zeros(len(seeds), np.int64))
    _write(out, mine, imgs, labs, rank, world, seed, total)


def _write(out: str, mine: list[int], imgs: list[np.ndarray], labs: list[np.ndarray], rank: int,
           world: int, seed: int, total: int) -> None:
    from .distributed import gather_to_rank0
    seeds, arr, lab = gather_to_rank0(np.array(mine), np.concatenate(imgs), np.concatenate(labs),
                                      rank, world, out)
    if rank != 0:
        return
    order = np.argsort(seeds)
    arr, lab = arr[order], lab[order]
    if out.endswith(".npz"):
        np.savez(out, arr_0=arr, arr_1=lab)
    else:
        save_grid(arr, out)
    print(f"wrote {len(arr)} images to {out}")
