"""Consistency distillation (paper Algorithm 2) from an EDM teacher.

``x_{t_{n+1}} = x + t_{n+1} z``; one Heun step of the teacher's PF ODE
``dx/dt = (x - D_phi(x, t)) / t`` from ``t_{n+1}`` to ``t_n`` gives ``x^phi_{t_n}``; the loss is
``d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(x^phi_{t_n}, t_n))`` with a fixed target EMA ``mu``.
"""
from __future__ import annotations

import torch

from ..models.denoiser import Denoiser
from .config import TrainConfig
from .consistency import ConsistencyObjective, adjacent_sigmas
from .rng import BatchRng


@torch.no_grad()
def heun_step(teacher: Denoiser, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
              labels: torch.Tensor | None) -> torch.Tensor:
    """One Heun step of the PF ODE from ``t`` [B] to ``t_next`` [B] (EDM Alg. 1, no churn)."""
    tb, tnb = t[:, None, None, None], t_next[:, None, None, None]
    d = (x - teacher(x, t, labels)) / tb
    x_euler = x + (tnb - tb) * d
    d2 = (x_euler - teacher(x_euler, t_next, labels)) / tnb
    return x + (tnb - tb) * (d + d2) / 2


class CDObjective(ConsistencyObjective):
    """CD with an ``num_scales``-point grid and a fixed target decay ``target_ema``."""

    def __init__(self, cfg: TrainConfig, model: Denoiser, teacher: Denoiser) -> None:
        super().__init__(cfg, model)
        self.teacher = teacher.requires_grad_(False).eval()

    def target_decay(self, step: int) -> float:
        return self.cfg.target_ema

    def loss(self, model: Denoiser, x: torch.Tensor, labels: torch.Tensor | None,
             rng: BatchRng, step: int) -> torch.Tensor:
        """Scalar CD loss for clean images ``x`` [B, C, H, W]."""
        t_lo, t_hi = adjacent_sigmas(self.cfg.num_scales, rng, self.cfg, x.device)
        z = rng.randn(*x.shape[1:]).to(x.device)
        x_hi = x + t_hi[:, None, None, None] * z
        x_lo = heun_step(self.teacher, x_hi, t_hi, t_lo, labels)
        return self.consistency_loss(model, x_hi, t_hi, x_lo, t_lo, labels)

    def log(self, step: int) -> dict[str, float]:
        return {"N": float(self.cfg.num_scales)}
