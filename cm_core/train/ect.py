"""Easy consistency tuning, ECT (Geng et al. 2024, arXiv 2406.14548): a pretrained diffusion
network (``--init``: a released EDM teacher or ours) tuned into a consistency model.

For clean ``x``: ``t = exp(P_mean + P_std n)`` (``n ~ N(0, 1)``, the iCT lognormal), and a
smaller ``r`` whose gap to ``t`` halves at every stage (``--ect-double`` steps each):

``r = max(0, t (1 - q^-(stage+1) (1 + k sigmoid(-b t))))`` (``q = 2``, ``k = 8``, ``b = 1``).

Both points share the noise ``z`` and the dropout masks; the target ``f(x + r z, r)`` is the
student under stop-gradient (``x`` itself where ``r = 0``), with no EMA. The loss is
``w(t, r) (sqrt(||f(x + t z, t) - target||^2 + c^2) - c)``: pseudo-Huber with ``--ect-c`` (0: the
plain L2 norm, ECT's adaptive weighting with p = 1/2, which makes the gradient independent of the
gap's size). ``--ect-weighting``: ``snr_plus_k``, ``w = 1/t^2 + 1/sigma_data^2`` (ECT's released
code, ``ECMLoss`` with ``wt='snrpk'``); ``inverse_gap``, ``w = 1 / (t - r)`` (iCT's lambda); or
``uniform``, ``w = 1``. ECT's released CIFAR-10 one-hour run tunes with ``q = 256`` (``--ect-q``)
and no doubling within the run, ``c = 0``, P_mean -1.1, P_std 2.0.
"""
from __future__ import annotations

import torch

from ..models.denoiser import Denoiser
from .config import TrainConfig
from .losses import pseudo_huber
from .rng import BatchRng


def ect_stage(step: int, cfg: TrainConfig) -> int:
    """The stage at ``step``: one more every ``cfg.ect_double`` steps."""
    return step // max(1, cfg.ect_double)


def t_to_r(t: torch.Tensor, stage: int, cfg: TrainConfig) -> torch.Tensor:
    """``r(t)`` at ``stage`` (module docstring): ``r < t`` and ``t - r`` halves per stage."""
    adj = 1 + cfg.ect_k * torch.sigmoid(-cfg.ect_b * t)
    return torch.clamp(t * (1 - adj / cfg.ect_q ** (stage + 1)), min=0)


def ect_weight(t: torch.Tensor, r: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The loss weight ``w(t, r)`` of ``cfg.ect_weighting`` (module docstring), per sample [B]."""
    if cfg.ect_weighting == "snr_plus_k":
        return 1 / t ** 2 + 1 / cfg.sigma_data ** 2
    if cfg.ect_weighting == "inverse_gap":
        return 1 / (t - r)
    return torch.ones_like(t)


class ECTObjective:
    """ECT: no target network (``extra`` is empty) and nothing to update after a step."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.extra: dict[str, torch.nn.Module] = {}

    def loss(self, model: Denoiser, x: torch.Tensor, labels: torch.Tensor | None,
             rng: BatchRng, step: int) -> torch.Tensor:
        """Scalar ECT loss for clean images ``x`` [B, C, H, W] in [-1, 1]."""
        t = torch.exp(self.cfg.ict_p_mean + self.cfg.ict_p_std * rng.randn(1)[:, 0]).to(x.device)
        t = t.clamp(self.cfg.sigma_min, self.cfg.sigma_max)
        r = t_to_r(t, ect_stage(step, self.cfg), self.cfg)
        z = rng.randn(*x.shape[1:]).to(x.device)
        with torch.no_grad():
            at_r = model(x + r[:, None, None, None] * z, r.clamp(min=self.cfg.sigma_min), labels)
            target = torch.where((r > 0)[:, None, None, None], at_r, x)
        pred = model(x + t[:, None, None, None] * z, t, labels)
        return (pseudo_huber(pred, target, self.cfg.ect_c) * ect_weight(t, r, self.cfg)).mean()

    def after_step(self, model: Denoiser, step: int) -> None:
        """Nothing: the target is the student itself."""

    def log(self, step: int) -> dict[str, float]:
        return {"stage": float(ect_stage(step, self.cfg))}
