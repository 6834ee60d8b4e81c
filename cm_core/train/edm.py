"""The EDM teacher's denoising score matching (Karras et al. 2022, eq. 2 and Table 1).

``ln sigma ~ N(P_mean, P_std^2)``, ``x_noisy = x + sigma n``, and the loss
``lambda(sigma) ||D(x_noisy, sigma) - x||^2`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``,
which makes the network's effective target unit-variance at every noise level.
"""
from __future__ import annotations

import torch

from ..models.denoiser import Denoiser
from .config import TrainConfig
from .rng import BatchRng


class EDMObjective:
    """Denoising score matching for an EDM-parameterised :class:`Denoiser` (``kind="edm"``)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.extra: dict[str, torch.nn.Module] = {}

    def loss(self, model: Denoiser, x: torch.Tensor, labels: torch.Tensor | None,
             rng: BatchRng, step: int) -> torch.Tensor:
        """Scalar loss for clean images ``x`` [B, C, H, W] in [-1, 1]; noise drawn from ``rng``."""
        sigma = torch.exp(self.cfg.p_mean + self.cfg.p_std * rng.randn()).to(x.device)
        n = rng.randn(*x.shape[1:]).to(x.device)
        sd = self.cfg.sigma_data
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        denoised = model(x + sigma[:, None, None, None] * n, sigma, labels)
        return (weight * (denoised - x).pow(2).flatten(1).mean(1)).mean()

    def after_step(self, model: Denoiser, step: int) -> None:
        """No target network for EDM."""

    def log(self, step: int) -> dict[str, float]:
        return {}
