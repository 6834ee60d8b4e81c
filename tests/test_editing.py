"""Zero-shot editing (paper Algorithm 4): exact constraints, the original's drawing order, errors.

Tiny random models only (any weights must satisfy the constraints); the whole file runs in a few
seconds on one CPU thread.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cm_core import editing, sampling
from cm_core.editing import editors
from cm_core.models.denoiser import Denoiser
from cm_core.models.network import build_unet
from cm_core.models.registry import ArchSpec, get_spec

TS, STEPS = [0, 22, 39], 40
LUM = torch.tensor([0.2989, 0.5870, 0.1140])
ARCH = ArchSpec(32, 32, 1, (16, 8), class_cond=True, use_scale_shift_norm=True,
                num_head_channels=32, channel_mult=(1, 2, 2), num_classes=10)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: one thread is much faster here
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def den() -> Denoiser:
    torch.manual_seed(0)
    d = Denoiser(build_unet(ARCH), "cm", num_classes=10, image_size=32).eval()
    with torch.no_grad():
        for p in d.parameters():  # no zero-initialised layer: every weight matters
            p.add_(torch.randn_like(p) * 0.05)
    return d


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = gen(1)
    images = torch.rand(2, 3, 32, 32, generator=g) * 1.6 - 0.8
    return images, torch.randn(2, 3, 32, 32, generator=g) * 80, torch.tensor([3, 7])


def last_denoised(fn, *args, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, the final x before the clamp): the callback's last 'denoised' is exactly that."""
    seen = []
    out = fn(*args, callback=lambda info: seen.append(info["denoised"]), **kw)
    return out, seen[-1]


# --------------------------------------------------------------------- the original, verbatim
def original_loop(distiller, images, x, ts, replacement, generator, steps=STEPS,
                  t_min=0.002, t_max=80.0, rho=7.0):
    """OpenAI's iterative_* loop (cm/karras_diffusion.py) with its numpy sigma arithmetic."""
    images = replacement(images, None)
    t_max_rho, t_min_rho = t_max ** (1 / rho), t_min ** (1 / rho)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(ts) - 1):
        t = (t_max_rho + ts[i] / (steps - 1) * (t_min_rho - t_max_rho)) ** rho
        x0 = torch.clamp(distiller(x, t * s_in), -1.0, 1.0)
        x0 = replacement(images, x0)
        next_t = (t_max_rho + ts[i + 1] / (steps - 1) * (t_min_rho - t_max_rho)) ** rho
        next_t = np.clip(next_t, t_min, t_max)
        x = x0 + torch.randn(x.shape, generator=generator) * np.sqrt(next_t ** 2 - t_min ** 2)
    return x.clamp(-1, 1), images


def original_q(vector: np.ndarray) -> torch.Tensor:
    vector = vector / np.linalg.norm(vector)
    matrix = np.eye(len(vector))
    matrix[:, 0] = vector
    matrix = np.linalg.qr(matrix)[0]
    if np.sum(matrix[:, 0]) < 0:
        matrix = -matrix
    return torch.from_numpy(matrix).to(torch.float32)


def original_colorization(distiller, images, x, ts, generator):
    Q = original_q(np.asarray([0.2989, 0.5870, 0.1140]))
    mask = torch.zeros(*x.shape[1:])
    mask[0, ...] = 1.0

    def replacement(x0, x1):
        x1 = torch.zeros_like(x0) if x1 is None else x1
        x0 = torch.einsum("bchw,cd->bdhw", x0, Q)
        x1 = torch.einsum("bchw,cd->bdhw", x1, Q)
        return torch.einsum("bdhw,cd->bchw", x0 * mask + x1 * (1.0 - mask), Q)
    return original_loop(distiller, images, x, ts, replacement, generator)


def original_superres(distiller, images, x, ts, generator, patch_size):
    Q = original_q(np.asarray([1] * patch_size ** 2))
    n = x.shape[-1]

    def flat(a):
        return (a.reshape(-1, 3, n // patch_size, patch_size, n // patch_size, patch_size)
                .permute(0, 1, 2, 4, 3, 5).reshape(-1, 3, n ** 2 // patch_size ** 2, patch_size ** 2))

    def unflat(a):
        return (a.reshape(-1, 3, n // patch_size, n // patch_size, patch_size, patch_size)
                .permute(0, 1, 2, 4, 3, 5).reshape(-1, 3, n, n))

    def replacement(x0, x1):
        if x1 is None:  # average_image_patches
            f = flat(x0)
            f[..., :] = f.mean(dim=-1, keepdim=True)
            return unflat(f)
        a = torch.einsum("bcnd,de->bcne", flat(x0), Q)
        b = torch.einsum("bcnd,de->bcne", flat(x1), Q)
        mix = a.new_zeros(a.shape)
        mix[..., 0] = a[..., 0]
        mix[..., 1:] = b[..., 1:]
        return unflat(torch.einsum("bcne,de->bcnd", mix, Q))
    return original_loop(distiller, images, x, ts, replacement, generator)


def original_inpainting(distiller, images, x, ts, generator, mask):
    def replacement(x0, x1):
        x1 = -torch.ones_like(x0) if x1 is None else x1
        return x0 * mask + x1 * (1 - mask)
    return original_loop(distiller, images, x, ts, replacement, generator)


def test_editors_match_the_original_implementation(den, batch):
    images, x, labels = batch
    dist = lambda a, s: den(a, s, labels)  # noqa: E731
    mask = torch.zeros(2, 3, 32, 32)
    mask[:, :, :, :16] = 1
    mask[1, :, 8:20, 4:12] = 0
    cases = [
        (editing.colorize(den, images, x, TS, STEPS, gen(5), labels, return_reference=True),
         original_colorization(dist, images, x, TS, gen(5))),
        (editing.inpaint(den, images, mask, x, TS, STEPS, gen(5), labels, return_reference=True),
         original_inpainting(dist, images, x, TS, gen(5), mask)),
        (editing.super_resolve(den, images, x, TS, STEPS, gen(5), 4, labels, return_reference=True),
         original_superres(dist, images, x, TS, gen(5), 4)),
        (editing.super_resolve(den, images, x, [0, 10, 25, 39], STEPS, gen(5), 8, labels,
                               return_reference=True),
         original_superres(dist, images, x, [0, 10, 25, 39], gen(5), 8)),
    ]
    for (out, ref), (want_out, want_ref) in cases:
        torch.testing.assert_close(ref, want_ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=0)
        assert out.abs().max() <= 1 and out.std() > 0.05


def test_edit_loop_is_multistep(den, batch):
    _, x, labels = batch
    want = sampling.multistep(den, x, TS, STEPS, gen(9), labels)
    got = editing.edit_loop(den, x, TS, STEPS, gen(9), None, labels).clamp(-1, 1)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=0)  # up to the ~1e-10 last-step noise


# --------------------------------------------------------------------- exact constraints
def test_bases_are_orthogonal_with_the_kept_axis_first():
    q = editing.luminance_basis().double()
    torch.testing.assert_close(q.T @ q, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(q[:, 0], (LUM / LUM.norm()).double(), atol=1e-7, rtol=0)
    for p in (2, 4, 8):
        b = editing.patch_basis(p).double()
        torch.testing.assert_close(b.T @ b, torch.eye(p * p, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(b[:, 0], torch.full((p * p,), 1 / p, dtype=torch.float64),
                                   atol=1e-7, rtol=0)


def luminance(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bchw,c->bhw", x.double(), LUM.double())


def test_colorize_keeps_the_reference_luminance(den, batch):
    images, x, labels = batch
    out, pre = last_denoised(editing.colorize, den, images, x, TS, STEPS, gen(2), labels)
    assert (luminance(pre) - luminance(images)).abs().max() < 1e-5
    unclipped = (out.abs() < 1).all(dim=1)
    assert unclipped.float().mean() > 0.5
    assert (luminance(out) - luminance(images))[unclipped].abs().max() < 1e-5
    assert torch.equal(out, pre.clamp(-1, 1))
    grey = images.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)  # grey input works the same
    out_g = editing.colorize(den, grey, x, TS, STEPS, gen(2), labels)
    assert (out_g[:, 0] - out_g[:, 1]).abs().max() > 1e-3  # colour appeared


def test_inpaint_equals_reference_where_kept(den, batch):
    images, x, labels = batch
    for mask in (torch.rand(32, 32, generator=gen(3)) > 0.5,
                 (torch.rand(2, 1, 32, 32, generator=gen(4)) > 0.3).float(),
                 (torch.rand(1, 32, 32, generator=gen(5)) > 0.7).float()):
        out, ref = editing.inpaint(den, images, mask, x, TS, STEPS, gen(2), labels,
                                   return_reference=True)
        keep = torch.broadcast_to(mask.float(), images.shape) == 1
        assert torch.equal(out[keep], images[keep])
        assert (ref[~keep] == -1).all()
        assert (out[~keep] - images[~keep]).abs().mean() > 0.05


@pytest.mark.parametrize("p", [2, 4, 8])
def test_super_resolve_keeps_patch_means(den, batch, p):
    images, x, labels = batch
    out, pre = last_denoised(editing.super_resolve, den, images, x, TS, STEPS, gen(2),
                             patch_size=p, class_labels=labels)
    low = editing.patch_means(images, p)
    assert (editing.patch_means(pre, p) - low).abs().max() < 1e-5
    unclipped = torch.nn.functional.max_pool2d(out.abs(), p) < 1
    assert (editing.patch_means(out, p) - low)[unclipped].abs().max() < 1e-5
    # a low-resolution image upsampled by nearest neighbour: its pixels are the patch means
    up = torch.nn.functional.interpolate(low, scale_factor=p, mode="nearest")
    _, pre_up = last_denoised(editing.super_resolve, den, up, x, TS, STEPS, gen(2),
                              patch_size=p, class_labels=labels)
    assert (editing.patch_means(pre_up, p) - low).abs().max() < 1e-5


# --------------------------------------------------------------------- interpolation
def test_slerp_properties():
    g = gen(11)
    a, b = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    assert torch.equal(editing.slerp(a, b, 0.0), a) and torch.equal(editing.slerp(a, b, 1.0), b)
    norm = a.flatten(1).norm(dim=1)
    bn = b / b.flatten(1).norm(dim=1)[:, None, None, None] * norm[:, None, None, None]
    fa, fb = a.double().flatten(1), bn.double().flatten(1)
    theta = torch.arccos((fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)))
    for al in (0.25, 0.5, 0.8):  # equal norms: on the great circle at constant speed
        m = editing.slerp(a, bn, al)
        torch.testing.assert_close(m.flatten(1).norm(dim=1), norm, rtol=1e-5, atol=0)
        md = m.double().flatten(1)
        ang = torch.arccos((md * fa).sum(1) / (md.norm(dim=1) * fa.norm(dim=1)))
        torch.testing.assert_close(ang, al * theta, atol=1e-4, rtol=0)
    torch.testing.assert_close(editing.slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: linear fallback
    with pytest.raises(ValueError, match="zero vector"):
        editing.slerp(a, torch.zeros_like(a), 0.5)


def test_interpolate_endpoints_reproduce_onestep_and_multistep(den, batch):
    _, x, labels = batch
    z1 = torch.randn(x.shape, generator=gen(12)) * 80
    alphas = [0.0, 0.3, 0.7, 1.0]
    frames = editing.interpolate(den, x, z1, alphas, [0, 39], STEPS, gen(4), labels)
    assert frames.shape == (4, 2, 3, 32, 32)
    torch.testing.assert_close(frames[0], sampling.onestep(den, x, labels), atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[-1], sampling.onestep(den, z1, labels), atol=1e-5, rtol=0)
    frames = editing.interpolate(den, x, z1, alphas, TS, STEPS, gen(4), labels, frame_batch=3)
    for k, z in ((0, x), (-1, z1)):
        want = sampling.multistep(den, z, TS, STEPS, gen(4), labels)
        torch.testing.assert_close(frames[k], want, atol=1e-5, rtol=0)
    chunked = editing.interpolate(den, x, z1, alphas, TS, STEPS, gen(4), labels, frame_batch=1)
    torch.testing.assert_close(chunked, frames, atol=1e-5, rtol=0)
    single = editing.interpolate(den, x[1], z1[1], [0.0, 0.5], TS, STEPS, [gen(4)], labels[1:])
    assert single.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="alphas is empty"):
        editing.interpolate(den, x, z1, [], TS, STEPS, gen(4), labels)


# --------------------------------------------------------------------- batches, determinism
def test_per_image_generators_make_images_batch_independent(den, batch):
    images, x, labels = batch
    mask = torch.ones(32, 32)
    mask[8:24, 8:24] = 0
    runs = [
        lambda i, g: editing.colorize(den, images[i], x[i], TS, STEPS, g, labels[i]),
        lambda i, g: editing.inpaint(den, images[i], mask, x[i], TS, STEPS, g, labels[i]),
        lambda i, g: editing.super_resolve(den, images[i], x[i], TS, STEPS, g, 4, labels[i]),
    ]
    for run in runs:
        both = run(slice(0, 2), [gen(20), gen(21)])
        alone = run(slice(1, 2), [gen(21)])
        torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
        assert torch.equal(run(slice(0, 2), [gen(20), gen(21)]), both)  # deterministic
        assert not torch.allclose(run(slice(0, 2), [gen(22), gen(21)])[0], both[0])


# --------------------------------------------------------------------- denoise and SDEdit
def test_denoise_starts_at_the_users_noise_level(den, batch):
    images, _, labels = batch
    sigma = 2 * 25 / 255  # 25 grey levels
    noisy = images + torch.randn(images.shape, generator=gen(6)) * sigma
    got = editing.denoise(den, noisy, sigma, None, labels)
    s = torch.full((2,), sigma)
    assert torch.equal(got, den(noisy, s, labels).clamp(-1, 1))
    more = editing.denoise(den, noisy, sigma, gen(6), labels, num_evals=3)
    assert more.shape == images.shape and more.abs().max() <= 1
    assert torch.equal(editing.denoise(den, noisy, 0.0, None, labels),  # f(x, sigma_min) = x
                       editing.denoise(den, noisy, 0.002, None, labels))
    with pytest.raises(ValueError, match="pass a generator"):
        editing.denoise(den, noisy, sigma, None, labels, num_evals=2)
    with pytest.raises(ValueError, match="sigma"):
        editing.denoise(den, noisy, float("nan"), None, labels)


def test_stroke_guided_draws_start_noise_then_one_per_step(den, batch):
    images, _, labels = batch
    got = editing.stroke_guided(den, images, 5.0, 2, gen(8), labels)
    g = gen(8)
    x = images + torch.randn(images.shape, generator=g) * 5.0
    sig = editors._sub_schedule(den, 5.0, 2)
    assert sig[0] == 5.0 and sig[-1] == 0.002 and len(sig) == 3
    want = editing.sigma_loop(den, x, sig, g, None, labels).clamp(-1, 1)
    assert torch.equal(got, want)


# --------------------------------------------------------------------- bad input
def test_bad_tensor_inputs_are_clear_errors(den, batch):
    images, x, labels = batch
    with pytest.raises(ValueError, match="keeps no pixel"):
        editing.inpaint(den, images, torch.zeros(32, 32), x, TS, STEPS, gen(0), labels)
    with pytest.raises(ValueError, match="nothing to inpaint"):
        editing.inpaint(den, images, torch.ones(32, 32), x, TS, STEPS, gen(0), labels)
    with pytest.raises(ValueError, match="does not fit"):
        editing.inpaint(den, images, torch.ones(16, 16), x, TS, STEPS, gen(0), labels)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        editing.inpaint(den, images, torch.full((32, 32), 2.0), x, TS, STEPS, gen(0), labels)
    with pytest.raises(ValueError, match="must divide|dividing"):
        editing.super_resolve(den, images, x, TS, STEPS, gen(0), 3, labels)
    with pytest.raises(ValueError, match="same shape"):
        editing.colorize(den, images, x[:1], TS, STEPS, gen(0), labels)
    with pytest.raises(ValueError, match="strictly increasing"):
        editing.colorize(den, images, x, [0, 39, 22], STEPS, gen(0), labels)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        editing.colorize(den, images, x, TS, STEPS, [gen(0)] * 3, labels)


# --------------------------------------------------------------------- picture requests
SPEC = get_spec("cd_digits32")  # 32 px, class-conditional, ts 0,22,39 / 40: matches ARCH
E = editing


def upload(w: int = 50, h: int = 40, mode: str = "RGBA") -> Image.Image:
    a = np.random.default_rng(0).integers(0, 256, (h, w, 4), dtype=np.uint8)
    return Image.fromarray(a, "RGBA").convert(mode)


def test_requests_return_model_sized_images_and_the_reference(den):
    for target, req in ((SPEC, E.Colorize(image=upload(), seed=3)),
                        (32, E.Inpaint(image=upload(), mask=np.eye(40, 50, dtype=bool), seed=3, class_label=1)),
                        (SPEC, E.SuperResolve(image=upload(mode="P"), seed=3)),
                        (SPEC, E.Denoise(image=upload(mode="L"), noise_std=20)),
                        (SPEC, E.StrokeGuided(image=upload(mode="CMYK"), sigma=3.0))):
        r = E.run_edit(den, target, req)
        assert {r.output.mode, r.reference.mode, r.input.mode} == {"RGB"}
        assert r.output.size == r.reference.size == r.input.size == (32, 32) and r.description
        assert E.run_edit(den, target, req).output.tobytes() == r.output.tobytes()  # seeded
    frames = E.interpolate_images(den, SPEC, 4, 5, num_frames=3, num_evals=1)
    assert len(frames) == 3 and all(f.size == (32, 32) for f in frames)
    with pytest.warns(DeprecationWarning, match="num_steps= is deprecated: use num_evals="):
        old = E.interpolate_images(den, SPEC, 4, 5, num_frames=3, num_steps=1)
    assert [f.tobytes() for f in old] == [f.tobytes() for f in frames]


def test_colorize_keeps_the_grey_reference(den):
    r = E.run_edit(den, SPEC, E.Colorize(image=upload(), seed=1, ts=(0, 10, 20, 39)))
    assert r.description == "colorized with ts 0,10,20,39 on a 40-point grid"
    assert np.ptp(np.asarray(r.reference, np.int16), axis=2).max() == 0  # grey
    y_out = np.asarray(r.output.convert("L"), np.int16)
    y_ref = np.asarray(r.reference.convert("L"), np.int16)
    unclipped = (np.asarray(r.output) % 255 != 0).all(axis=2)
    assert np.abs(y_out - y_ref)[unclipped].max() <= 2  # up to uint8 rounding


def test_inpaint_keeps_unpainted_pixels(den):
    img = upload(32, 32, "RGB")
    painted = np.zeros((32, 32, 4), np.uint8)
    painted[8:20, 10:30, 3] = 255  # a painted layer: painted = alpha
    r = E.run_edit(den, SPEC, E.Inpaint(image=img, mask=E.pictures.mask_array(painted), seed=2))
    o, ref, src = (np.asarray(a) for a in (r.output, r.reference, img))
    keep = painted[..., 3] == 0
    assert (o[keep] == src[keep]).all() and (ref[~keep] == 0).all()
    assert np.abs(o[~keep].astype(int) - src[~keep]).mean() > 5
    shown = np.asarray(r.input)  # the region to regenerate is tinted
    assert (shown[keep] == src[keep]).all() and (shown[~keep] != src[~keep]).any()


def test_super_resolve_keeps_the_low_resolution_pixels(den):
    rng = np.random.default_rng(5)  # 8x8 upload, patch 4: it is the low-resolution input
    low = Image.fromarray(rng.integers(90, 166, (8, 8, 3), dtype=np.uint8), "RGB")
    r = E.run_edit(den, SPEC, E.SuperResolve(image=low, patch_size=4, seed=2))
    out, ref = r.output, r.reference
    means = np.asarray(out, np.float64).reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
    blocks = np.asarray(out).reshape(8, 4, 8, 4, 3)
    unclipped = ((blocks > 0) & (blocks < 255)).all(axis=(1, 3, 4))
    assert unclipped.mean() > 0.5
    assert np.abs(means - np.asarray(low))[unclipped].max() <= 0.5  # uint8 rounding only
    assert (np.asarray(ref)[::4, ::4] == np.asarray(low)).all()


def test_request_bad_inputs(den):
    edm = Denoiser(den.net, "edm", num_classes=10, image_size=32)
    cases = [
        (lambda: E.run_edit(den, SPEC, E.Inpaint(image=upload(), mask=np.zeros((40, 50), bool))), "empty"),
        (lambda: E.run_edit(den, SPEC, E.Inpaint(image=upload(), mask=np.ones((40, 50), bool))), "whole image"),
        (lambda: E.run_edit(den, SPEC, E.Inpaint(image=upload(), mask=np.ones((10, 10), bool))), "mask is 10x10"),
        (lambda: E.run_edit(den, SPEC, E.SuperResolve(image=upload(), patch_size=5)), "divide"),
        (lambda: E.run_edit(den, 32, E.Colorize(image=upload())), "class-conditional"),
        (lambda: E.run_edit(den, 64, E.Colorize(image=upload(), class_label=1)), "32 px"),
        (lambda: E.run_edit(den, SPEC, E.Colorize(image=upload(), class_label=10)), r"\[0, 9\]"),
        (lambda: E.run_edit(edm, SPEC, E.Colorize(image=upload())), "consistency model"),
        (lambda: E.run_edit(den, SPEC, E.Colorize(image=upload(), ts=(0, 50))), "ts"),
    ]
    for run, msg in cases:
        with pytest.raises(ValueError, match=msg):
            run()
