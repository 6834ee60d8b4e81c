"""What both training loops share: the objective protocol, the model and objective factories,
loading ``--init`` / ``--teacher`` weights, and the learning-rate and EMA schedules."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from ..models.checkpoints import load_denoiser
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
    if cfg.method == "cd":
        if not cfg.teacher:
            raise ValueError("cd needs --teacher (a registry name or a path to an EDM model)")
        teacher = load_weights(cfg.teacher, cfg, "edm", device)
        if cfg.init_from_teacher and not cfg.init:
            _copy_weights(model, teacher, cfg.teacher)
        return CDObjective(cfg, model, teacher)
    raise ValueError(f"method must be edm, cd or ct, got {cfg.method!r}")


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
                         f"matching --preset or architecture flags): {str(e).splitlines()[0][:200]}") from None


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` over ``cfg.warmup`` steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


def ema_decay(step: int, cfg: TrainConfig) -> float:
    """Slow-EMA decay with the usual warm-up ``min(ema, (1 + k) / (10 + k))``."""
    return min(cfg.ema, (1 + step) / (10 + step))
