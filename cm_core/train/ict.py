"""Improved consistency training, iCT (Song & Dhariwal 2023, arXiv 2310.14189).

What changes from the paper's CT (:mod:`.ct`):

* no EMA target: the target is the student itself under stop-gradient (``theta^- = stopgrad(theta)``),
  evaluated with the same dropout masks (the engine keys masks by sample position, not by call);
* noise-level pairs ``(sigma_i, sigma_{i+1})`` of the Karras grid are drawn from a discretised
  lognormal, ``p(i) ∝ erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_i - P_mean) / (sqrt(2) P_std))``
  (``P_mean = -1.1``, ``P_std = 2.0``), instead of uniformly;
* the exponential curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` with
  ``K' = floor(K / (log2 floor(s1 / s0) + 1))`` (``s0 = 10``, ``s1 = 1280``);
* each pair is weighted by ``lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)``, with the pseudo-Huber
  distance ``c = 0.00054 sqrt(d)`` (``--loss``, the default).
"""
from __future__ import annotations

import math

import torch

from ..models.denoiser import Denoiser
from .config import TrainConfig
from .consistency import karras_grid
from .losses import get_distance
from .rng import BatchRng


def doubling_scales(step: int, cfg: TrainConfig) -> int:
    """``N(k)``: grid points at ``k = step`` of ``K = cfg.steps`` (the step count doubles ``log2(s1/s0)`` times)."""
    s0, s1 = cfg.ict_start_scales, cfg.ict_end_scales
    stage = max(1, math.floor(cfg.steps / (math.log2(math.floor(s1 / s0)) + 1)))
    return min(s0 * 2 ** (step // stage), s1) + 1


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """Probabilities [N-1] of the pairs ``(sigmas[i], sigmas[i+1])`` of an ascending grid [N]: the
    lognormal's mass between them, renormalised over the grid."""
    c = torch.erf((torch.log(sigmas.double()) - p_mean) / (math.sqrt(2.0) * p_std))
    p = c[1:] - c[:-1]
    return p / p.sum()


def lognormal_pairs(n: int, rng: BatchRng, cfg: TrainConfig,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_i, sigma_{i+1})`` [B] each on the ``n``-point grid, ``i`` drawn by inverse CDF from
    a standard normal of each sample's stream (``u = Phi(z)``), so any world size draws the same."""
    grid = karras_grid(n, cfg)
    cdf = torch.cumsum(lognormal_index_probs(grid, cfg.ict_p_mean, cfg.ict_p_std), 0)
    u = 0.5 * (1 + torch.erf(rng.randn(1)[:, 0].double() / math.sqrt(2.0)))
    idx = torch.searchsorted(cdf, u, right=True).clamp(max=n - 2)
    return grid[idx].float().to(device), grid[idx + 1].float().to(device)


class ICTObjective:
    """iCT: no target network to keep (``extra`` is empty) and nothing to update after a step."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.distance = get_distance(cfg.loss)
        self.extra: dict[str, torch.nn.Module] = {}

    def loss(self, model: Denoiser, x: torch.Tensor, labels: torch.Tensor | None,
             rng: BatchRng, step: int) -> torch.Tensor:
        """``mean_b lambda_b d(f_theta(x + sigma_{i+1} z), stopgrad f_theta(x + sigma_i z))`` for
        clean images ``x`` [B, C, H, W] in [-1, 1]."""
        t_lo, t_hi = lognormal_pairs(doubling_scales(step, self.cfg), rng, self.cfg, x.device)
        z = rng.randn(*x.shape[1:]).to(x.device)
        with torch.no_grad():
            target = model(x + t_lo[:, None, None, None] * z, t_lo, labels)
        pred = model(x + t_hi[:, None, None, None] * z, t_hi, labels)
        return (self.distance(pred, target) / (t_hi - t_lo)).mean()

    def after_step(self, model: Denoiser, step: int) -> None:
        """Nothing: the target is the student itself."""

    def log(self, step: int) -> dict[str, float]:
        return {"N": float(doubling_scales(step, self.cfg))}
