"""Consistency training (paper Algorithm 3): no teacher, the score is estimated by Monte Carlo.

With the same ``z``, ``x_{t_{n+1}} = x + t_{n+1} z`` and ``x_{t_n} = x + t_n z`` (the unbiased
one-sample estimate of the score, Theorem 2). The grid grows and the target decay follows the
paper's adaptive schedules (Appendix C, ``K`` = total steps, ``s0``/``s1`` start/end scales):

``N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1``,
``mu(k) = exp(s0 ln(mu0) / N(k))``.
"""
from __future__ import annotations

import math

import torch

from ..models.denoiser import Denoiser
from .config import TrainConfig
from .consistency import ConsistencyObjective, adjacent_sigmas
from .rng import BatchRng


def num_scales(step: int, cfg: TrainConfig) -> int:
    """``N(k)`` of the paper for ``k = step`` out of ``K = cfg.steps``."""
    s0, s1 = cfg.start_scales, cfg.end_scales
    frac = min(step / max(cfg.steps, 1), 1.0)
    return int(math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1)


def target_mu(step: int, cfg: TrainConfig) -> float:
    """``mu(k) = exp(s0 ln(mu0) / N(k))``."""
    return math.exp(cfg.start_scales * math.log(cfg.start_ema) / num_scales(step, cfg))


class CTObjective(ConsistencyObjective):
    """CT with the adaptive ``N(k)`` and ``mu(k)`` schedules."""

    def target_decay(self, step: int) -> float:
        return target_mu(step, self.cfg)

    def loss(self, model: Denoiser, x: torch.Tensor, labels: torch.Tensor | None,
             rng: BatchRng, step: int) -> torch.Tensor:
        """Scalar CT loss for clean images ``x`` [B, C, H, W]."""
        t_lo, t_hi = adjacent_sigmas(num_scales(step, self.cfg), rng, self.cfg, x.device)
        z = rng.randn(*x.shape[1:]).to(x.device)
        x_hi = x + t_hi[:, None, None, None] * z
        x_lo = x + t_lo[:, None, None, None] * z
        return self.consistency_loss(model, x_hi, t_hi, x_lo, t_lo, labels)

    def log(self, step: int) -> dict[str, float]:
        return {"N": float(num_scales(step, self.cfg)), "mu": target_mu(step, self.cfg)}
