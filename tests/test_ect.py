"""Easy consistency tuning: r(t) per stage, the stop-gradient target, and a falling loss."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cm_core.models.checkpoints import load_denoiser
from cm_core.train import TrainConfig, run_training
from cm_core.train.ect import ECTObjective, ect_stage, t_to_r
from cm_core.train.rng import StepRng
from test_train import _cfg, _held_out_loss


@pytest.mark.parametrize("t, stage, r", [
    (80.0, 0, 40.0), (80.0, 1, 60.0), (80.0, 2, 70.0),  # sigmoid(-80) ~ 0: the gap t / 2^(stage+1)
    (1.0, 0, 0.0),  # 1 + 8 sigmoid(-1) = 3.1515 > 2: clamped at 0, the target is the clean image
    (1.0, 3, 1 - (1 + 8 / (1 + math.e)) / 16),
    (0.1, 5, 0.1 * (1 - (1 + 8 / (1 + math.exp(0.1))) / 64)),
])
def test_r_of_t_at_each_stage(t, stage, r):
    got = float(t_to_r(torch.tensor([t], dtype=torch.float64), stage, TrainConfig()))
    assert got == pytest.approx(r, rel=1e-6, abs=1e-9)


def test_the_gap_halves_per_stage_and_stages_last_ect_double_steps():
    cfg = TrainConfig(ect_double=100)
    t = torch.logspace(-2, 1.9, 50, dtype=torch.float64)
    for s in range(4):
        r0, r1 = t_to_r(t, s, cfg), t_to_r(t, s + 1, cfg)
        both = r0 > 0
        assert (r1 <= t).all() and (r1 >= r0).all()
        torch.testing.assert_close((t - r0)[both] / (t - r1)[both], torch.full_like(t[both], 2.0))
    assert [ect_stage(k, cfg) for k in (0, 99, 100, 250)] == [0, 0, 1, 2]


def test_the_target_is_the_student_under_stop_gradient_or_the_clean_image():
    cfg = TrainConfig(method="ect", ect_c=0.1, ect_weighting="inverse_gap")
    obj = ECTObjective(cfg)
    assert obj.extra == {}
    w = torch.nn.Parameter(torch.tensor(0.7))

    def f(x, sigma, labels):
        return w * x * sigma[:, None, None, None]

    x = torch.full((6, 1, 2, 2), 0.5)
    loss = obj.loss(f, x, None, StepRng(torch.Generator().manual_seed(5), 6), step=3 * cfg.ect_double)
    g = StepRng(torch.Generator().manual_seed(5), 6)  # the same draws, by hand
    t = torch.exp(-1.1 + 2.0 * g.randn(1)[:, 0]).clamp(0.002, 80.0)
    z = g.randn(1, 2, 2)
    r = t_to_r(t, 3, cfg)
    b = lambda v: v[:, None, None, None]  # noqa: E731
    target = torch.where(b(r > 0), 0.7 * (x + b(r) * z) * b(r.clamp(min=0.002)), x)
    d2 = ((0.7 * (x + b(t) * z) * b(t) - target) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(loss, ((torch.sqrt(d2 + 0.01) - 0.1) / (t - r)).mean())
    loss.backward()  # through the student's branch only: d/dw of the target is not taken
    with torch.no_grad():
        pred = 0.7 * (x + b(t) * z) * b(t)
        dpred = (x + b(t) * z) * b(t)
        want = (((pred - target) * dpred).flatten(1).sum(1) / torch.sqrt(d2 + 0.01) / (t - r)).mean()
    torch.testing.assert_close(w.grad, want)
    for weighting, w_by_hand in (("uniform", torch.ones_like(t)), ("snr_plus_k", 1 / t ** 2 + 1 / 0.5 ** 2)):
        other = ECTObjective(TrainConfig(method="ect", ect_c=0.1, ect_weighting=weighting))
        loss_w = other.loss(f, x, None, StepRng(torch.Generator().manual_seed(5), 6), step=3 * cfg.ect_double)
        torch.testing.assert_close(loss_w, ((torch.sqrt(d2 + 0.01) - 0.1) * w_by_hand).mean().detach())


def test_ect_loss_is_finite_and_falls_on_the_digits(tmp_path: Path):
    """Within the first stage, 5 -> 40 steps: the one-step denoising error falls."""
    fixed = dict(ect_double=1000)
    early = run_training(_cfg(tmp_path, "ect", 5, save_every=5, **fixed), progress=False)
    before = _held_out_loss(early["model"], _cfg(tmp_path, "ect", 5, **fixed))
    res = run_training(_cfg(tmp_path, "ect", 40, **fixed), resume=True, progress=False)
    assert all(math.isfinite(v) for v in res["losses"])
    after = _held_out_loss(res["model"], _cfg(tmp_path, "ect", 40, **fixed))
    assert after < 0.9 * before, (before, after)
    assert load_denoiser(res["model"], device="cpu").kind == "cm"


def test_a_config_stored_before_the_weighting_choice_resumes_with_the_weighting_it_ran_with():
    stored = TrainConfig(method="ect").to_json().replace('"ect_weighting": "snr_plus_k", ', "")
    assert "ect_weighting" not in stored
    assert TrainConfig.from_json(stored).ect_weighting == "inverse_gap"
    assert TrainConfig.from_json(TrainConfig(method="ect").to_json()).ect_weighting == "snr_plus_k"
