"""Properties of the denoiser and samplers: boundary condition, determinism, batch independence."""
import pytest
import torch

from cm_core import sampling
from cm_core.models.denoiser import Denoiser
from cm_core.models.network import MCDropout, build_unet
from cm_core.models.registry import ArchSpec
from cm_core.sampling import schedule

TINY = ArchSpec(32, 32, 1, (16, 8), class_cond=True, use_scale_shift_norm=True, num_head_channels=32,
                channel_mult=(1, 2, 2), num_classes=10, dropout=0.1)


@pytest.fixture(scope="module")
def den():
    torch.manual_seed(0)
    net = build_unet(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero-initialised layers
    return Denoiser(net, "cm", num_classes=10, image_size=32)


def test_boundary_condition(den):
    """f(x, sigma_min) = x exactly: c_skip = 1, c_out = 0 (paper eq. 7)."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = den(x, torch.full((2,), 0.002), torch.tensor([0, 1]))
    assert torch.equal(out, x) or (out - x).abs().max() < 1e-7


SIGMAS = torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 10.0, 80.0])


def test_consistency_scalings_pin_the_boundary_and_follow_the_paper(den):
    """CM (paper eq. 7 with Karras et al.'s sigma_data): c_skip = sd^2 / ((s - smin)^2 + sd^2),
    c_out = (s - smin) sd / sqrt(s^2 + sd^2): exactly 1 and 0 at sigma_min, so f(x, sigma_min) = x."""
    c_skip, c_out, c_in = den.scalings(SIGMAS)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    s, sd, smin = SIGMAS.double(), 0.5, 0.002
    torch.testing.assert_close(c_skip.double(), sd ** 2 / ((s - smin) ** 2 + sd ** 2), rtol=1e-6, atol=0)
    torch.testing.assert_close(c_out.double(), (s - smin) * sd / (s ** 2 + sd ** 2).sqrt(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(c_in.double(), 1 / (s ** 2 + sd ** 2).sqrt(), rtol=1e-6, atol=0)
    assert bool((c_skip[1:] < 1).all() and (c_out[1:] > 0).all())  # the network matters above sigma_min
    assert bool((c_skip.diff() < 0).all() and (c_out.diff() > 0).all())  # monotone in sigma


def test_edm_scalings_keep_unit_variance_and_do_not_pin_sigma_min(den):
    """EDM (Karras et al. 2022, Table 1): c_skip + c_out^2 / sd^2 = 1 at every sigma (the target has
    unit variance), and nothing pins the boundary: c_out(sigma_min) > 0."""
    edm = Denoiser(den.net, "edm", num_classes=10)
    c_skip, c_out, _ = edm.scalings(SIGMAS)
    torch.testing.assert_close(c_skip + c_out ** 2 / 0.25, torch.ones_like(SIGMAS))
    assert c_out[0].item() == pytest.approx(0.002 * 0.5 / (0.002 ** 2 + 0.25) ** 0.5, rel=1e-6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # so the EDM denoiser is not the identity at sigma_min
        assert not torch.equal(edm(x, torch.full((2,), 0.002), torch.tensor([0, 1])), x)


def test_karras_grid_endpoints_and_ts():
    sig = schedule.karras_sigmas(40)
    assert sig[0] == pytest.approx(80.0) and sig[39] == pytest.approx(0.002) and sig[-1] == 0.0
    assert schedule.ts_to_sigmas([0, 22, 39], 40)[1] == pytest.approx(sig[22])
    assert schedule.pick_ts(2, 40, (0, 22, 39)) == [0, 22, 39]
    assert schedule.pick_ts(4, 40) == [0, 10, 20, 29, 39]
    for bad in ([0], [3, 2], [0, 40], [0.5, 3]):
        with pytest.raises(ValueError, match="ts"):
            schedule.validate_ts(bad, 40)


def test_parse_ts_text_forms():
    assert schedule.parse_ts(None, 40) == (None, 40) and schedule.parse_ts(" ", 40) == (None, 40)
    assert schedule.parse_ts("0, 22,39", 40) == ((0, 22, 39), 40)
    assert schedule.parse_ts("0,106,200/201", 40) == ((0, 106, 200), 201)
    assert schedule.parse_ts([0, 39], 40) == ((0, 39), 40)
    with pytest.raises(ValueError, match="comma-separated integers like 0,22,39"):
        schedule.parse_ts("0;22", 40)
    with pytest.raises(ValueError, match=r"\[0, 39\]"):
        schedule.parse_ts("0,40", 40)


def test_heun_uses_2n_minus_1_evaluations(den):
    calls = []

    def counting(x, s, y=None, **kw):
        calls.append(1)
        return den(x, s, y, **kw)
    # any callable with the Denoiser's contract: the call and the model's noise range
    counting.sigma_min, counting.sigma_max, counting.sigma_data = den.sigma_min, den.sigma_max, den.sigma_data

    with torch.no_grad():
        sampling.heun(counting, torch.randn(1, 3, 32, 32) * 80, 5, torch.tensor([3]))
    assert len(calls) == 9


def test_per_image_generators_make_batch_independent(den):
    y = torch.tensor([1, 2, 3])
    with torch.no_grad():
        g3 = sampling.make_generators(10, 3)
        x3 = sampling.initial_noise((3, 3, 32, 32), g3)
        out3 = sampling.multistep(den, x3, [0, 22, 39], 40, g3, y)
        g1 = sampling.make_generators(11, 1)
        x1 = sampling.initial_noise((1, 3, 32, 32), g1)
        out1 = sampling.multistep(den, x1, [0, 22, 39], 40, g1, y[1:2])
    assert torch.allclose(out3[1:2], out1, atol=1e-5)


def test_dropout_is_real_and_reproducible(den):
    x, s, y = torch.randn(2, 3, 32, 32) * 80, torch.full((2,), 80.0), torch.tensor([4, 5])
    gens = lambda seed: sampling.make_generators(seed, 2, stream="dropout")  # noqa: E731
    with torch.no_grad():
        base = den(x, s, y)
        a = den(x, s, y, dropout_rng=MCDropout(0.3, gens(1)))
        b = den(x, s, y, dropout_rng=MCDropout(0.3, gens(1)))
        c = den(x, s, y, dropout_rng=MCDropout(0.3, gens(2)))
        d = den(x, s, y, dropout_rng=MCDropout(0.6, gens(1)))
        default_rate = den(x, s, y, dropout_rng=gens(1))  # the model's own rate: 0
        again = den(x, s, y)
    assert torch.equal(a, b)
    assert (a - base).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3 and (a - d).abs().max() > 1e-3
    assert torch.equal(base, again) and torch.equal(base, default_rate)
    assert den.dropout == 0.0  # a call's rate never changes the model
    with pytest.raises(ValueError, match="dropout"):
        den(x, s, y, dropout_rng=MCDropout(1.5, gens(1)))
    with pytest.raises(ValueError, match="dropout"):
        den.dropout = 1.5


def test_class_label_errors(den):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="class-conditional"):
        den(x, torch.ones(2))
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        den(x, torch.ones(2), torch.tensor([3, 10]))


def test_onestep_clamped_and_deterministic(den):
    x = sampling.initial_noise((2, 3, 32, 32), sampling.make_generators(0, 2))
    with torch.no_grad():
        a = sampling.onestep(den, x, torch.tensor([1, 2]))
        b = sampling.onestep(den, x, torch.tensor([1, 2]))
    assert torch.equal(a, b) and a.abs().max() <= 1


def test_half_precision_runs_close(den):
    x = sampling.initial_noise((2, 3, 32, 32), sampling.make_generators(0, 2))
    y = torch.tensor([1, 2])
    with torch.no_grad():
        ref = sampling.onestep(den, x, y)
        bf = Denoiser(build_unet(TINY).to(torch.bfloat16), "cm", num_classes=10)
        bf.net.load_state_dict({k: v.to(torch.bfloat16) for k, v in den.net.state_dict().items()})
        out = sampling.onestep(bf, x, y)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1


def test_step_names_mean_one_thing_and_the_old_keywords_still_work(den):
    """grid_size = points of the Karras grid, num_evals = network evaluations, heun_steps = Heun
    steps; the old keywords give the same result with a DeprecationWarning naming the new one."""
    from cm_core.editing import editors
    from cm_core.sampling.generate import SampleSettings
    x, y = sampling.initial_noise((1, 3, 32, 32), sampling.make_generators(0, 1)), torch.tensor([2])
    g = lambda: sampling.make_generators(1, 1)  # noqa: E731
    new = sampling.multistep(den, x, [0, 20, 39], grid_size=40, generator=g(), class_labels=y)
    with pytest.warns(DeprecationWarning, match="steps= is deprecated: use grid_size="):
        old = sampling.multistep(den, x, [0, 20, 39], steps=40, generator=g(), class_labels=y)
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning, match="num_steps= is deprecated: use heun_steps="):
        assert torch.equal(sampling.heun(den, x, num_steps=3, class_labels=y), sampling.heun(den, x, heun_steps=3, class_labels=y))
    with pytest.warns(DeprecationWarning, match="use num_evals="):
        assert torch.equal(editors.stroke_guided(den, x / 80, 2.0, num_steps=2, generator=g(), class_labels=y),
                           editors.stroke_guided(den, x / 80, 2.0, num_evals=2, generator=g(), class_labels=y))
    with pytest.warns(DeprecationWarning, match="use num_evals="):
        assert schedule.pick_ts(num_steps=2, steps=40) == schedule.pick_ts(num_evals=2, grid_size=40) == [0, 20, 39]
    with pytest.raises(TypeError, match="both"):
        schedule.pick_ts(2, grid_size=40, steps=40)
    with pytest.warns(DeprecationWarning, match="use num_evals="):
        assert SampleSettings(steps=3, grid_steps=201) == SampleSettings(num_evals=3, grid_size=201)
    with pytest.raises(ValueError, match="heun_steps >= 2"):  # no silent max(steps, 2)
        sampling.heun(den, x, 1, y)
