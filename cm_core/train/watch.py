"""What a run shows while it trains (rank 0 only): TensorBoard event files under ``OUT/tb``
(loss, learning rate, gradient norm, images/s and the objective's curriculum: the grid size
``N`` of CD, CT and iCT, CT's target decay ``mu``, ECT's stage) and, every ``--sample-every``
steps and at the last step, a fixed-seed grid of the EMA network's samples in
``OUT/samples/step_NNNNNNN.png`` (also under TensorBoard's images).

TensorBoard is optional (``requirements-dev.txt``): without it a run says so once and keeps
``log.csv``, which ``python -m cm_core train plot RUN`` draws.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.files import atomic_path
from ..models.registry import ModelSpec
from ..sampling.generate import SampleSettings, grid_array, sample_batch, to_uint8
from .config import TrainConfig

log = logging.getLogger(__name__)

GRID_IMAGES = 16  # samples per grid: seeds 0..15, class i % num_classes
GRID_HEUN_STEPS = 18  # an EDM run's grid: Heun over 18 noise levels (35 network evaluations)


def run_spec(cfg: TrainConfig) -> ModelSpec:
    """A registry-style description of the network ``cfg`` trains, for the samplers."""
    return ModelSpec(name=Path(cfg.out).name or "run", arch=cfg.arch(), kind=cfg.kind,  # type: ignore[arg-type]
                     dataset=str(cfg.data), method=cfg.method, sigma_min=cfg.sigma_min,
                     sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data, heun_steps=GRID_HEUN_STEPS)


@torch.no_grad()
def sample_grid(net: torch.nn.Module, cfg: TrainConfig) -> np.ndarray:
    """A uint8 [H, W, 3] grid (4 x 4) of ``net``'s samples (a Denoiser of ``cfg``'s architecture,
    e.g. the EMA): one step for consistency models, Heun for EDM, from the same seeds (0..15)
    and labels (``i % num_classes``) at every call, so grids of a run compare step to step."""
    seeds = list(range(GRID_IMAGES))
    labels = torch.arange(GRID_IMAGES) % cfg.num_classes if cfg.class_cond else None
    was_training = net.training
    net.eval()
    try:
        images = sample_batch(net, run_spec(cfg), seeds, SampleSettings(num_evals=1), labels)  # type: ignore[arg-type]
    finally:
        net.train(was_training)
    return grid_array(to_uint8(images))


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write a uint8 HWC image as a PNG, atomically."""
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp)
    return path


def _summary_writer(folder: Path, start: int) -> Any:
    """A SummaryWriter on ``folder`` (on resume, events a killed run logged past ``start`` are
    purged), or None without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed (pip install tensorboard, or "
                    "requirements-dev.txt): no event files; log.csv has the figures")
        return None
    return SummaryWriter(str(folder), purge_step=start + 1 if start > 0 else None, flush_secs=30)


class Watch:
    """Rank 0's event files and sample grids of one run; nothing at all when ``enabled`` is False
    (the other ranks)."""

    def __init__(self, cfg: TrainConfig, out: Path, start: int, enabled: bool) -> None:
        self.cfg, self.out, self.enabled = cfg, out, enabled
        self.writer = _summary_writer(out / "tb", start) if enabled else None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` (tag -> number) at global step ``step + 1`` (the steps done)."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step + 1)

    def samples_due(self, step: int) -> bool:
        """Whether step ``step`` ends with a grid: every ``sample_every`` steps, and the last."""
        every, done = self.cfg.sample_every, step + 1
        return self.enabled and every > 0 and (done % every == 0 or done == self.cfg.steps)

    def samples(self, step: int, net: torch.nn.Module) -> Path:
        """``net``'s grid into ``samples/step_NNNNNNN.png`` (and TensorBoard); returns the file."""
        grid = sample_grid(net, self.cfg)
        if self.writer is not None:
            self.writer.add_image("samples", grid, step + 1, dataformats="HWC")
        return save_png(grid, self.out / "samples" / f"step_{step + 1:07d}.png")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
