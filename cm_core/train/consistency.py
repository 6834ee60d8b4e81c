"""Shared pieces of CD and CT: the discretisation grid and the target network.

Paper Sec. 3: ``t_i = (eps^(1/rho) + (i-1)/(N-1) (T^(1/rho) - eps^(1/rho)))^rho`` for
``i = 1..N`` (rho 7), and the consistency loss
``L = E[lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(x_{t_n}, t_n))]`` with
``lambda = 1`` and ``theta^- <- stopgrad(mu theta^- + (1 - mu) theta)``.
"""
from __future__ import annotations

import torch

from ..models.denoiser import Denoiser
from .config import TrainConfig
from .losses import get_distance
from .rng import BatchRng
from .state import ema_update, frozen_copy


def karras_grid(n: int, cfg: TrainConfig) -> torch.Tensor:
    """Ascending grid ``t_1 = sigma_min < ... < t_N = sigma_max`` [N] (float64)."""
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    return (lo + i * (hi - lo)) ** cfg.rho


def adjacent_sigmas(n: int, rng: BatchRng, cfg: TrainConfig,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_n, t_{n+1})`` [B] each, ``n ~ U{1, ..., N-1}`` on an ``n``-point grid."""
    grid = karras_grid(n, cfg)
    idx = rng.randint(n - 1)
    return grid[idx].float().to(device), grid[idx + 1].float().to(device)


class ConsistencyObjective:
    """Base of CD and CT: holds the target network ``theta^-`` and the distance ``d``."""

    def __init__(self, cfg: TrainConfig, model: Denoiser) -> None:
        self.cfg = cfg
        self.distance = get_distance(cfg.loss)
        self.target = frozen_copy(model)
        self.extra: dict[str, torch.nn.Module] = {"target": self.target}

    def target_decay(self, step: int) -> float:
        """``mu`` at ``step``."""
        raise NotImplementedError

    def consistency_loss(self, model: Denoiser, x_hi: torch.Tensor, t_hi: torch.Tensor,
                         x_lo: torch.Tensor, t_lo: torch.Tensor,
                         labels: torch.Tensor | None) -> torch.Tensor:
        """``mean d(f_theta(x_hi, t_{n+1}), f_theta^-(x_lo, t_n))`` over the batch."""
        with torch.no_grad():
            y = self.target(x_lo, t_lo, labels)
        return self.distance(model(x_hi, t_hi, labels), y).mean()

    def after_step(self, model: Denoiser, step: int) -> None:
        """Target update ``theta^- <- mu theta^- + (1 - mu) theta``."""
        ema_update(self.target, model, self.target_decay(step))
