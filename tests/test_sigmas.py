"""Multistep sampling over noise levels given directly ("sigmas: 80, 40, 20, 10, 5"), the form
k-diffusion style consistency samplers take, through the same request field as ``ts``."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from cm_core import service as S
from cm_core.models.checkpoints import load_denoiser
from cm_core.models.registry import get_spec
from cm_core.sampling import schedule
from cm_core.sampling.generate import SampleSettings, sample_batch
from cm_core.sampling.loop import sigma_loop
from cm_core.sampling.samplers import initial_noise, make_generators, multistep

MODEL = "cd_digits32"


@pytest.fixture(scope="module")
def den():
    return load_denoiser(MODEL, device="cpu")


def test_parse_sigmas_appends_sigma_min_and_validates():
    assert schedule.parse_sigmas("sigmas: 80, 40, 20, 10, 5") == (80.0, 40.0, 20.0, 10.0, 5.0, 0.002)
    assert schedule.parse_sigmas("SIGMAS:80,1,0.002") == (80.0, 1.0, 0.002)  # sigma_min given: not doubled
    for text, needle in [("sigmas: 40, 60", "decreasing"), ("sigmas: 100, 40", "(0.002, 80]"),
                         ("sigmas: 40, x", "comma-separated numbers"), ("sigmas:", "at least one"),
                         ("sigmas: 80, nan", "(0.002, 80]"), ("sigmas: 0.001", "(0.002, 80]")]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("]", r"\]")):
            schedule.parse_sigmas(text)


def test_sigmas_equal_the_sampler_run_on_the_same_sigmas_by_hand(den):
    spec = get_spec(MODEL)
    seeds = [3, 4, 5]
    sig = (80.0, 40.0, 20.0, 10.0, 5.0, spec.sigma_min)
    labels = torch.tensor([1, 2, 3])
    got = sample_batch(den, spec, seeds, SampleSettings(sigmas=schedule.parse_sigmas(
        "sigmas: 80,40,20,10,5", spec.sigma_min, spec.sigma_max)), labels)
    gens = [g for s in seeds for g in make_generators(s, 1, torch.device("cpu"))]
    x_T = initial_noise((3, 3, 32, 32), gens, 80.0)
    with torch.no_grad():
        by_hand = sigma_loop(den, x_T, sig, gens, class_labels=labels).clamp(-1, 1)
    assert torch.equal(got, by_hand)


def test_grid_sigmas_give_exactly_the_ts_sampler(den):
    """Listing the sigmas of grid indices 0, 22 is multistep sampling with ts 0,22,39."""
    spec = get_spec(MODEL)
    levels = schedule.ts_to_sigmas([0, 22, 39], 40)
    text = "sigmas: " + ", ".join(repr(v) for v in levels[:-1])
    labels = torch.tensor([4, 5])
    got = sample_batch(den, spec, [7, 8], SampleSettings(sigmas=schedule.parse_sigmas(text)), labels)
    gens = [g for s in (7, 8) for g in make_generators(s, 1, torch.device("cpu"))]
    with torch.no_grad():
        want = multistep(den, initial_noise((2, 3, 32, 32), gens, 80.0), [0, 22, 39], 40, gens, labels)
    assert torch.equal(got, want)


def test_a_request_takes_sigmas_in_the_ts_field_and_starts_from_noise_at_the_first_level():
    p = S.plan(S.GenerateRequest(MODEL, ts="sigmas: 40, 10, 1", batch_size=1))
    assert p.settings.sigmas == (40.0, 10.0, 1.0, 0.002) and p.evaluations == 3
    assert p.description == "multistep over sigmas 40, 10, 1"
    with pytest.raises(ValueError, match="at most 200 network evaluations"):
        S.plan(S.GenerateRequest(MODEL, ts="sigmas: " + ",".join(str(80 - i * 0.3) for i in range(250))))
    with pytest.raises(ValueError, match="generation only"):  # editors take grid indices
        S.colorize(MODEL, Image.new("RGB", (32, 32)), ts="sigmas: 80, 40")


def test_previews_come_once_per_step_and_the_last_is_the_result():
    """Multistep and Heun report each step's denoised estimates as images; the last step's
    estimate is the sample (multistep ends on a denoise; Heun's last step is an Euler step to 0)."""
    import numpy as np

    from cm_core import service as S
    for req, steps in ((S.GenerateRequest("cd_digits32", steps=3, batch_size=2, seed=5), 3),
                       (S.GenerateRequest("edm_digits32", heun_steps=4, batch_size=2, seed=5), 4)):
        seen: list = []
        r = S.generate(req, preview=lambda i, n, imgs: seen.append((i, n, imgs)))
        assert [(i, n) for i, n, _ in seen] == [(i, steps) for i in range(steps)]
        assert all(len(imgs) == 2 and imgs[0].size == (32, 32) for _, _, imgs in seen)
        if req.model == "cd_digits32":
            assert np.array_equal(np.asarray(seen[-1][2][1]), np.asarray(r.images[1]))
        plain = S.generate(req)  # previews do not change the samples
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain.images, r.images))
