"""What both training loops share: the objective protocol, the model and objective factories,
loading ``--init`` / ``--teacher`` weights, the learning-rate and EMA schedules, and the step log
(progress bar, ``log.csv``, checkpoint cadence)."""
from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from ..models.checkpoints import first_line, load_denoiser
from ..models.denoiser import Denoiser
from ..models.network import build_unet
from ..models.registry import REGISTRY
from .config import TrainConfig
from .rng import BatchRng


class Objective(Protocol):
    extra: dict[str, torch.nn.Module]

    def loss(self, model: Denoiser, x: torch.Tensor, labels: torch.Tensor | None,
             rng: BatchRng, step: int) -> torch.Tensor: ...

    def after_step(self, model: Denoiser, step: int) -> None: ...

    def log(self, step: int) -> dict[str, float]: ...


def build_model(cfg: TrainConfig, device: torch.device) -> Denoiser:
    """A fresh :class:`Denoiser` of ``cfg``'s architecture and kind, in train mode."""
    arch = cfg.arch()
    den = Denoiser(build_unet(arch), kind=cfg.kind, sigma_min=cfg.sigma_min,  # type: ignore[arg-type]
                   sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data,
                   num_classes=arch.num_classes if arch.class_cond else None,
                   image_size=arch.image_size)
    return den.to(device).train()


def make_objective(cfg: TrainConfig, model: Denoiser, device: torch.device) -> Objective:
    """The objective of ``cfg.method``; CD loads its teacher (and may copy its weights)."""
    from .cd import CDObjective
    from .ct import CTObjective
    from .edm import EDMObjective
    if cfg.init:
        _copy_weights(model, load_weights(cfg.init, cfg, None, device), cfg.init)
    if cfg.method == "edm":
        return EDMObjective(cfg)
    if cfg.method == "ct":
        return CTObjective(cfg, model)
    if cfg.method == "ict":
        from .ict import ICTObjective
        return ICTObjective(cfg)
    if cfg.method == "ect":
        from .ect import ECTObjective
        return ECTObjective(cfg)
    if cfg.method == "cd":
        if not cfg.teacher:
            raise ValueError("cd needs --teacher (a registry name or a path to an EDM model)")
        teacher = load_weights(cfg.teacher, cfg, "edm", device)
        if cfg.init_from_teacher and not cfg.init:
            _copy_weights(model, teacher, cfg.teacher)
        return CDObjective(cfg, model, teacher)
    raise ValueError(f"method must be edm, cd, ct, ict or ect, got {cfg.method!r}")


def load_weights(source: str, cfg: TrainConfig, kind: str | None, device: torch.device) -> Denoiser:
    """A released ``.pt`` (architecture from the registry name or else ``cfg``), a Hub repo id,
    a registry name or one of our ``.safetensors`` files, as a :class:`Denoiser`."""
    arch = cfg.arch() if str(source).endswith(".pt") and Path(source).stem not in REGISTRY else None
    return load_denoiser(source, arch=arch, kind=kind, device=device)


def _copy_weights(model: Denoiser, src: Denoiser, name: str) -> None:
    try:
        model.net.load_state_dict(src.net.state_dict())
    except RuntimeError as e:
        raise ValueError(f"{name}: its architecture differs from the training config (pass the "
                         f"matching --preset or architecture flags): {first_line(e)}") from None


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` over ``cfg.warmup`` steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


def ema_decay(step: int, cfg: TrainConfig) -> float:
    """Slow-EMA decay with the usual warm-up ``min(ema, (1 + k) / (10 + k))``."""
    return min(cfg.ema, (1 + step) / (10 + step))


class StepLog:
    """The progress bar and ``log.csv`` (step, loss, lr, images/s) of steps ``start .. cfg.steps - 1``.

    ``write=False`` (ranks other than 0) keeps the bar's bookkeeping but writes no file. Iterate it for
    the steps, :meth:`record` each step's loss, and checkpoint when :meth:`checkpoint_due` says so.
    """

    def __init__(self, cfg: TrainConfig, out: Path, start: int, progress: bool, write: bool = True,
                 desc: str = "") -> None:
        self.cfg, self.losses = cfg, []
        self._file = open(out / "log.csv", "a", newline="") if write else None
        self._writer = csv.writer(self._file) if self._file is not None else None
        self._bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
                         desc=desc or f"train {cfg.method}", dynamic_ncols=True)
        self.t0 = self._last = time.time()
        self.images_per_s = 0.0  # of the last recorded step
        self.curriculum: dict[str, float] = {}  # the objective's log at the last recorded step

    def __iter__(self) -> Iterator[int]:
        return iter(self._bar)

    def record(self, step: int, loss: float, objective: Objective) -> float:
        """Log step ``step``'s loss (bar postfix with the mean of the last 50, a csv row); returns now."""
        self.losses.append(loss)
        now = time.time()
        ips, self._last = self.cfg.batch_size / max(now - self._last, 1e-9), now
        self.images_per_s, self.curriculum = ips, objective.log(step)
        recent = self.losses[-50:]
        self._bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", img_s=f"{ips:.0f}",
                              **{k: f"{v:.4g}" for k, v in self.curriculum.items()})
        if self._writer is not None:
            self._writer.writerow([step + 1, f"{loss:.6f}", f"{learning_rate(step, self.cfg):.3g}", f"{ips:.1f}"])
        return now

    def checkpoint_due(self, step: int) -> bool:
        """Whether to checkpoint after step ``step`` (every ``save_every`` steps and at the end);
        the log is flushed first, so it never runs behind a checkpoint."""
        done = step + 1
        due = done % self.cfg.save_every == 0 or done == self.cfg.steps
        if due and self._file is not None:
            self._file.flush()
        return due

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
