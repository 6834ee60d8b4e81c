"""Improved consistency training: its noise-level distribution, curriculum, target and loss."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from cm_core.models.checkpoints import load_denoiser
from cm_core.train import TrainConfig, run_training
from cm_core.train.consistency import karras_grid
from cm_core.train.ict import ICTObjective, doubling_scales, lognormal_pairs
from cm_core.train.rng import StepRng
from test_train import _cfg, _held_out_loss


def test_pairs_follow_the_discretised_lognormal():
    cfg = TrainConfig()
    n, draws = 21, 40_000
    t_lo, _ = lognormal_pairs(n, StepRng(torch.Generator().manual_seed(0), draws), cfg, torch.device("cpu"))
    grid = karras_grid(n, cfg).numpy()
    idx = np.searchsorted(grid.astype(np.float32), t_lo.numpy())
    cdf = stats.norm.cdf(np.log(grid), loc=-1.1, scale=2.0)  # an independent statement of the law
    p = np.diff(cdf) / (cdf[-1] - cdf[0])
    observed = np.bincount(idx, minlength=n - 1)
    keep = p * draws >= 5  # chi-square needs expected counts >= 5
    obs, exp = observed[keep], p[keep] * draws
    if (~keep).any():  # the rare tail pooled into one cell
        obs, exp = np.append(obs, observed[~keep].sum()), np.append(exp, p[~keep].sum() * draws)
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


@pytest.mark.parametrize("step, n", [(0, 11), (124, 11), (125, 21), (250, 41), (874, 641), (875, 1281), (999, 1281)])
def test_the_curriculum_doubles_the_grid_each_stage(step, n):
    cfg = TrainConfig(steps=1000)  # s0 10, s1 1280: 8 stages of floor(1000 / 8) = 125 steps
    assert doubling_scales(step, cfg) == n


def test_the_target_is_the_student_under_stop_gradient():
    cfg = TrainConfig(method="ict", steps=100, loss="l2")
    obj = ICTObjective(cfg)
    assert obj.extra == {}  # no EMA or target network to keep or save
    model = torch.nn.Linear(1, 1)  # stands in for f_theta(x, sigma, labels)

    def f(x, sigma, labels):
        return model.weight * x * sigma[:, None, None, None]

    x = torch.ones(4, 1, 1, 1)
    loss = obj.loss(f, x, None, StepRng(torch.Generator().manual_seed(3), 4), step=0)
    g = StepRng(torch.Generator().manual_seed(3), 4)  # the same draws, by hand
    lo, hi = lognormal_pairs(doubling_scales(0, cfg), g, cfg, torch.device("cpu"))
    z = g.randn(1, 1, 1)
    w = model.weight.detach()
    want = ((w * (x + hi[:, None, None, None] * z) * hi[:, None, None, None]
             - w * (x + lo[:, None, None, None] * z) * lo[:, None, None, None]) ** 2).flatten(1).sum(1) / (hi - lo)
    torch.testing.assert_close(loss, want.mean())
    loss.backward()  # the gradient flows through the student's branch only
    grad = ((2 * (hi * (1 + hi * z.flatten()) - lo * (1 + lo * z.flatten())) * w.flatten() * (1 + hi * z.flatten()) * hi)
            / (hi - lo)).mean()
    torch.testing.assert_close(model.weight.grad.flatten(), grad.reshape(1))
    before = model.weight.detach().clone()
    obj.after_step(f, 0)
    assert torch.equal(model.weight, before)


def _consistency_gap(model: str, cfg: TrainConfig) -> float:
    """Fixed-seed iCT loss of a saved model at N = 11: the same number on every call."""
    from cm_core.train.data import load_dataset
    den = load_denoiser(model, device="cpu")
    g = torch.Generator().manual_seed(1)
    x, labels = load_dataset("digits", size=cfg.image_size).batch(256, g)
    with torch.no_grad():
        return float(ICTObjective(cfg).loss(den, x, labels, StepRng(g, len(x)), step=0))


def test_ict_loss_is_finite_and_falls_on_the_digits(tmp_path: Path):
    """At a fixed 11-point grid (s0 = s1 = 10), 5 -> 30 steps: the fixed-seed iCT loss falls
    (measured 7.96 -> 7.55) and so does the one-step denoising error (1.12 -> 1.01)."""
    fixed = dict(ict_start_scales=10, ict_end_scales=10)
    early = run_training(_cfg(tmp_path, "ict", 5, save_every=5, **fixed), progress=False)
    before = _consistency_gap(early["model"], _cfg(tmp_path, "ict", 5, **fixed))
    denoise_before = _held_out_loss(early["model"], _cfg(tmp_path, "ict", 5, **fixed))
    res = run_training(_cfg(tmp_path, "ict", 30, **fixed), resume=True, progress=False)
    assert all(math.isfinite(v) for v in res["losses"])
    after = _consistency_gap(res["model"], _cfg(tmp_path, "ict", 30, **fixed))
    assert after < 0.97 * before, (before, after)
    assert _held_out_loss(res["model"], _cfg(tmp_path, "ict", 30, **fixed)) < 0.93 * denoise_before
    assert load_denoiser(res["model"], device="cpu").kind == "cm"


def test_each_sample_draws_from_its_own_position_so_the_split_does_not_matter():
    """What makes ranks agree: the loss of 8 samples is the mean of the losses of any split of
    them (as two ranks or two accumulation steps compute it), dropout included."""
    from cm_core.train.common import build_model
    from cm_core.train.dropout import install_train_dropout, position_dropout
    from cm_core.train.rng import PositionRng
    cfg = TrainConfig(method="ict", image_size=8, channel_mult="1,1", attention_resolutions="", dropout=0.3,
                      device="cpu")
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))
    install_train_dropout(model.net, cfg.dropout)
    obj, pos = ICTObjective(cfg), list(range(100, 108))
    x, labels = torch.rand(8, 3, 8, 8) * 2 - 1, torch.arange(8) % 10

    def loss(idx: slice) -> torch.Tensor:
        with position_dropout(model.net, cfg.seed, pos[idx]):
            return obj.loss(model, x[idx], labels[idx], PositionRng(cfg.seed, pos[idx]), step=40)

    whole = loss(slice(0, 8))
    torch.testing.assert_close(whole, (loss(slice(0, 4)) + loss(slice(4, 8))) / 2, rtol=1e-5, atol=1e-6)
    with position_dropout(model.net, cfg.seed, pos):
        other_seed = obj.loss(model, x, labels, PositionRng(cfg.seed + 1, pos), step=40)
    assert not torch.equal(whole, other_seed)  # the draws do come from the positions' streams
