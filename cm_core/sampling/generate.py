"""High-level generation over a registry spec: seeds, batching, labels, output files.

Used by the CLI and the app. Image ``i`` of a request with seed ``s`` always uses per-image seed
``s + i`` (its noise, its multistep noise, its dropout masks and, when no class is given, its
random class label), so results do not depend on the batch size or on how a run is sharded.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass
from pathlib import Path

import numpy as np
import torch

from ..accel.fast import FastDenoiser
from ..models.denoiser import Denoiser
from ..models.files import atomic_path
from ..models.messages import renamed
from ..models.network import MCDropout
from ..models.registry import ModelSpec
from .runner import run_loop
from .samplers import heun, initial_noise, make_generators, multistep, onestep
from .schedule import pick_ts, validate_ts

_LABEL_STREAM = 0x2545F4914F6CDD1D  # random class labels: a stream apart from the noise seeds


@dataclass(frozen=True)
class SampleSettings:
    """What to sample. Consistency models: ``num_evals`` network evaluations (1 = one-step) at
    the registry's ``ts``, or explicit ``ts`` on a ``grid_size``-point Karras grid, or explicit
    noise levels ``sigmas`` (:func:`cm_core.sampling.schedule.parse_sigmas`: the levels evaluated,
    then sigma_min). EDM teachers: ``heun_steps`` Heun steps (None: the model's). ``steps`` and
    ``grid_steps`` are the deprecated names of ``num_evals`` and ``grid_size``."""

    num_evals: int = 1
    ts: tuple[int, ...] | None = None
    grid_size: int | None = None
    dropout: float = 0.0
    sigmas: tuple[float, ...] | None = None
    heun_steps: int | None = None
    steps: InitVar[int | None] = None
    grid_steps: InitVar[int | None] = None

    def __post_init__(self, steps: int | None, grid_steps: int | None) -> None:
        given = {k: v for k, v in (("steps", steps), ("grid_steps", grid_steps)) if v is not None}
        for new, value in renamed(given, steps="num_evals", grid_steps="grid_size").items():
            object.__setattr__(self, new, value)

    def resolved_ts(self, spec: ModelSpec) -> tuple[list[int], int] | None:
        """(ts, grid) for multistep CM sampling, or None for one-step / Heun."""
        if self.ts is None and (spec.kind == "edm" or self.num_evals == 1):
            return None
        ts, grid = model_ts(spec, self.num_evals, self.ts, self.grid_size)
        return list(ts), grid

    def evaluations(self, spec: ModelSpec) -> int:
        """Network evaluations per image: ``2 n - 1`` for ``n`` Heun steps (EDM teachers), else
        one per noise level but the last (``sigmas`` and ``ts`` end on sigma_min, unevaluated)."""
        if spec.kind == "edm":
            return 2 * (self.heun_steps or spec.heun_steps) - 1
        if self.sigmas is not None:
            return len(self.sigmas) - 1
        plan = self.resolved_ts(spec)
        return 1 if plan is None else len(plan[0]) - 1


def model_ts(spec: ModelSpec | None, num_evals: int, ts: Sequence[int] | None = None,
             grid_size: int | None = None) -> tuple[tuple[int, ...], int]:
    """(ts, grid_size): explicit ``ts`` on a ``grid_size``-point Karras grid (default: the model's,
    40 without a registry entry), else ``num_evals`` evaluations at the registry's tuned ``ts``
    when it has that many (:func:`cm_core.sampling.schedule.pick_ts`)."""
    grid = int(grid_size or (spec.grid_size if spec is not None else 40))
    if ts is not None:
        validate_ts(ts, grid)
        return tuple(int(t) for t in ts), grid
    return tuple(pick_ts(num_evals, grid, spec.ts if spec is not None and grid == spec.grid_size else ())), grid


def labels_for(spec: ModelSpec, seeds: Sequence[int], class_label: int | None) -> torch.Tensor | None:
    """Class labels: ``class_label`` for all images (its range is the network's to check), else one
    drawn from each image's own seed."""
    if not spec.class_cond:
        return None
    n = spec.arch.num_classes
    if class_label is not None:
        return torch.full((len(seeds),), int(class_label), dtype=torch.long)
    gens = [torch.Generator().manual_seed((s + _LABEL_STREAM) % 2 ** 63) for s in seeds]
    return torch.tensor([int(torch.randint(n, (1,), generator=g)) for g in gens], dtype=torch.long)


@torch.no_grad()
def sample_batch(den: Denoiser | FastDenoiser, spec: ModelSpec, seeds: Sequence[int],
                 settings: SampleSettings, labels: torch.Tensor | None,
                 callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Images [B, 3, R, R] in [-1, 1] for per-image ``seeds`` on ``den``'s device.

    On a CUDA-graphed :class:`~cm_core.accel.fast.FastDenoiser`, a consistency model without dropout
    (and with no callback, or a progress-only one) runs as one graph replay: the samplers go
    through :func:`cm_core.sampling.runner.run_loop`, which pre-draws each image's noise in the order
    the un-graphed loop draws it.
    """
    dev = next(den.parameters()).device
    gens = [g for s in seeds for g in make_generators(s, 1, dev)]
    drop = MCDropout(settings.dropout, [g for s in seeds for g in make_generators(s, 1, dev, "dropout")]) \
        if settings.dropout else None
    r = spec.resolution
    sigmas = settings.sigmas if spec.kind != "edm" else None
    x_T = initial_noise((len(seeds), 3, r, r), gens, sigmas[0] if sigmas else spec.sigma_max, device=dev)
    labels = labels.to(dev) if labels is not None and not isinstance(den, FastDenoiser) else labels
    if spec.kind == "edm":
        return heun(den, x_T, settings.heun_steps or spec.heun_steps, labels, drop, callback)
    if sigmas is not None:  # Algorithm 1 over the given levels, from noise at the first one
        return run_loop(den, x_T, sigmas, gens, None, labels, dropout_rng=drop, callback=callback).clamp(-1, 1)
    plan = settings.resolved_ts(spec)
    if plan is None:
        return onestep(den, x_T, labels, dropout_rng=drop, callback=callback)
    return multistep(den, x_T, plan[0], plan[1], gens, labels, drop, callback)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor -> uint8 NHWC array (the original's ``((x + 1) * 127.5).clamp(0, 255)``)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid_array(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images -> one near-square uint8 HWC grid, row by row (black where none is left)."""
    n, h, w, c = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return grid


def save_grid(images: np.ndarray, path: str | Path) -> None:
    """Save uint8 NHWC images as a near-square PNG grid (:func:`grid_array`)."""
    from PIL import Image
    Image.fromarray(grid_array(images)).save(path)


def sample_shard(den: Denoiser | FastDenoiser, spec: ModelSpec, seed: int, indices: Sequence[int],
                 settings: SampleSettings, class_label: int | None, batch_size: int,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images [n, R, R, 3] and int64 labels [n] for images ``indices`` (seeds
    ``seed + i``), sampled ``batch_size`` at a time into preallocated arrays (no float copies
    of the whole shard are ever held).

    A short last batch is padded (repeating its last seed) to ``batch_size``: kernels may round
    differently at another batch size (~1e-6), while an image's result never depends on which
    images share its batch, so a fixed network batch size makes the uint8 file bit-identical
    for any number of processes. Across different ``batch_size`` values it is identical up to
    rare 1-level rounding flips (see tests/test_distributed.py).
    """
    from tqdm import tqdm
    r, n = spec.resolution, len(indices)
    imgs = np.empty((n, r, r, 3), np.uint8)
    labs = np.zeros(n, np.int64)
    with tqdm(total=n, desc="sampling", unit="img", disable=not progress) as bar:
        for i in range(0, n, batch_size):
            seeds = [seed + j for j in indices[i:i + batch_size]]
            k = len(seeds)
            seeds += seeds[-1:] * (batch_size - k)
            labels = labels_for(spec, seeds, class_label)
            imgs[i:i + k] = to_uint8(sample_batch(den, spec, seeds, settings, labels)[:k])
            if labels is not None:
                labs[i:i + k] = labels[:k].numpy()
            bar.update(k)
    return imgs, labs


def write_samples(out: str, arr: np.ndarray, lab: np.ndarray) -> None:
    """``.npz`` in OpenAI's evaluation layout (``arr_0`` uint8 NHWC, ``arr_1`` labels) or a PNG grid,
    written atomically: a temporary file beside ``out`` (same suffix, so numpy and PIL keep the
    format), renamed once complete, so a killed run never leaves a file that looks finished."""
    with atomic_path(out) as tmp:
        if out.endswith(".npz"):
            np.savez(tmp, arr_0=arr, arr_1=lab)
        else:
            save_grid(arr, tmp)
    print(f"wrote {len(arr)} images to {out}")
