"""Zero-shot image editing with a consistency model (paper Section 6 and Algorithm 4).

Every editor runs the same loop, :func:`edit_loop` (Algorithm 4 of Song et al. 2023)::

    x = starting point (noise * sigma_max, or a reference plus noise)
    for i in 0 .. len(ts) - 2:
        x0 = clamp(D(x, t_i), -1, 1)
        x0 = A^-1[(A y) * keep + (A x0) * (1 - keep)]     # put the known part of y back
        x  = x0 + z_i * sqrt(t_{i+1}^2 - sigma_min^2)     # z_i: one randn draw per step
    return clamp(x, -1, 1)

``t_i`` is point ``ts[i]`` of a ``grid_size``-point Karras grid (rho 7, sigma_max -> sigma_min),
``t_{i+1}`` is clipped to [sigma_min, sigma_max], and ``z_i = torch.randn(x.shape, generator=g)``
is drawn at every step, the last one included (its scale is 0), exactly as the original
``iterative_colorization`` / ``iterative_inpainting`` / ``iterative_superres``. ``generator`` is one
``torch.Generator`` (one draw for the batch) or a list with one per image (each image then depends
only on its own generator). The editors differ only in the orthogonal transform ``A`` and ``keep``:

* :func:`colorize`: ``A`` is a 3x3 colour basis whose first axis is the normalised luminance vector
  (0.2989, 0.5870, 0.1140); keep = that axis. ``y`` is the input projected on it.
* :func:`inpaint`: ``A`` = identity, keep = ``mask`` (1 = keep the reference pixel); ``y`` is the
  input with -1 wherever ``mask`` is 0.
* :func:`super_resolve`: ``A`` is an orthogonal basis of each p x p patch whose first vector is
  constant; keep = that coefficient (the patch mean); ``y`` is the input with every patch replaced
  by its mean.

Plus :func:`interpolate` (slerp between two starting noises), :func:`denoise` and
:func:`stroke_guided` (SDEdit). Images are [B, 3, H, W] in [-1, 1]; results are clamped to [-1, 1].

Exactness: before the final clamp the kept part equals the reference's exactly (the last step's
scale is snapped to 0; the original adds ~1e-10 noise there through float rounding of the grid
end). The clamp only moves values that left [-1, 1] (possible for colorize and super_resolve,
never for inpaint), so the constraints hold exactly on every unclipped pixel or patch.

The loop lives in :mod:`cm_core.sampling.loop`, the transforms in :mod:`cm_core.editing.transforms`,
the PIL-level requests (``Colorize``, ``Inpaint``, ...) and their runner ``run_edit`` in
:mod:`cm_core.editing.picture_editors`; :mod:`cm_core.editing` re-exports them all.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..models.denoiser import Rng, noise_like
from ..models.messages import old_keywords
from ..sampling.loop import Callback, DenoiseFn, Replacement, sigma_range
from ..sampling.runner import edit_loop, run_loop
from ..sampling.schedule import karras_sigmas, ts_to_sigmas
from .transforms import (
    average_patches,
    check_patch_size,
    color_replacement,
    keep_known,
    luminance_basis,
    patch_basis,
    patch_replacement,
)


# ----------------------------------------------------------------------------- the editors
def _check_pair(images: torch.Tensor, x: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    if images.shape != x.shape:
        raise ValueError(f"images {tuple(images.shape)} and the starting noise x {tuple(x.shape)} "
                         "must have the same shape")


def _finish(x: torch.Tensor, reference: torch.Tensor, return_reference: bool
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    out = x.clamp(-1, 1)
    return (out, reference) if return_reference else out


@old_keywords(steps="grid_size")
@torch.no_grad()
def colorize(den: DenoiseFn, images: torch.Tensor, x: torch.Tensor, ts: Sequence[int], grid_size: int,
             generator: Rng, class_labels: torch.Tensor | None = None, *, dropout_rng: Rng = None,
             callback: Callback | None = None, return_reference: bool = False
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Colorization (Algorithm 4, the original ``iterative_colorization``).

    ``images``: [B, 3, H, W] in [-1, 1]; only their luminance is used (a grey image repeated over
    3 channels is fine). ``x``: [B, 3, H, W] noise already times sigma_max. Returns [B, 3, H, W] in
    [-1, 1] whose luminance ``0.2989 R + 0.587 G + 0.114 B`` equals the input's wherever no channel
    was clipped by the final clamp (exactly so before it: see ``callback``'s last "denoised").
    With ``return_reference`` also returns ``y`` (the input projected on the luminance axis).
    """
    _check_pair(images, x)
    repl = color_replacement(luminance_basis(images.device).to(images.dtype))
    ref = repl(images, torch.zeros_like(images))
    out = edit_loop(den, x, ts, grid_size, generator,
                    Replacement(lambda x0, r: repl(r, x0), (ref,), "colorize"), class_labels,
                    dropout_rng=dropout_rng, callback=callback)
    return _finish(out, ref, return_reference)


def _check_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``mask`` (1 = keep) broadcast to ``images``' shape, with clear errors."""
    mask = torch.as_tensor(mask).to(device=images.device, dtype=images.dtype)
    try:
        full = torch.broadcast_to(mask, images.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape "
                         f"{tuple(images.shape)}: give [H, W], [1|3, H, W] or [B, 1|3, H, W] "
                         f"with H, W = {tuple(images.shape[-2:])}") from None
    if not torch.isfinite(full).all() or full.min() < 0 or full.max() > 1:
        raise ValueError("mask values must be in [0, 1] (1 = keep the reference pixel)")
    per_image = full.reshape(full.shape[0], -1)
    if (per_image.amax(dim=1) <= 0).any():
        raise ValueError("the inpainting mask keeps no pixel of an image (mask is all 0): nothing "
                         "is known; use multistep generation instead, or mark pixels to keep with 1")
    if (per_image.amin(dim=1) >= 1).any():
        raise ValueError("the inpainting mask keeps every pixel of an image (mask is all 1): "
                         "there is nothing to inpaint; mark the region to fill with 0")
    return full


@old_keywords(steps="grid_size")
@torch.no_grad()
def inpaint(den: DenoiseFn, images: torch.Tensor, mask: torch.Tensor, x: torch.Tensor,
            ts: Sequence[int], grid_size: int, generator: Rng, class_labels: torch.Tensor | None = None,
            *, dropout_rng: Rng = None, callback: Callback | None = None,
            return_reference: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Inpainting (Algorithm 4 with A = identity; the original ``iterative_inpainting``).

    ``mask``: 1 where the reference pixel is KEPT, 0 where it is generated; shape [H, W],
    [1|3, H, W] or [B, 1|3, H, W]. The reference ``y`` is ``images`` with -1 where mask is 0.
    Returns [B, 3, H, W] in [-1, 1], equal to ``images`` wherever mask == 1.
    """
    _check_pair(images, x)
    keep = _check_mask(mask, images)
    ref = keep_known(-torch.ones_like(images), images, keep)
    out = edit_loop(den, x, ts, grid_size, generator, Replacement(keep_known, (ref, keep), "inpaint"),
                    class_labels, dropout_rng=dropout_rng, callback=callback)
    return _finish(out, ref, return_reference)


@old_keywords(steps="grid_size")
@torch.no_grad()
def super_resolve(den: DenoiseFn, images: torch.Tensor, x: torch.Tensor, ts: Sequence[int],
                  grid_size: int, generator: Rng, patch_size: int = 8,
                  class_labels: torch.Tensor | None = None, *, dropout_rng: Rng = None,
                  callback: Callback | None = None, return_reference: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Super-resolution (Algorithm 4; the original ``iterative_superres``, patch size 8 there).

    ``images``: [B, 3, H, W] in [-1, 1]: a high-resolution image (only its p x p patch means are
    used) or a low-resolution one upsampled by p with nearest neighbour. ``patch_size`` p must
    divide H and W (8 for 256 px in the paper; 4 or 2 for 64 px). Returns [B, 3, H, W] in [-1, 1]
    whose patch means equal the input's wherever the final clamp clipped nothing. The reference
    ``y`` is ``images`` with every patch replaced by its mean.
    """
    _check_pair(images, x)
    check_patch_size(images, patch_size)
    repl = patch_replacement(patch_basis(patch_size, images.device).to(images.dtype), patch_size)
    ref = average_patches(images, patch_size)
    out = edit_loop(den, x, ts, grid_size, generator,
                    Replacement(lambda x0, r: repl(r, x0), (ref,), f"super_resolve/{patch_size}"),
                    class_labels, dropout_rng=dropout_rng, callback=callback)
    return _finish(out, ref, return_reference)


# ----------------------------------------------------------------------------- interpolation
def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation ``sin((1-a)θ)/sin θ · z0 + sin(aθ)/sin θ · z1``, θ = angle(z0, z1).

    ``z0``, ``z1``: same shape; [B, ...] 4-D tensors get one angle per image, other shapes one
    angle overall. Computed in float64: ``alpha`` 0 and 1 return ``z0`` and ``z1`` exactly; nearly
    (anti)parallel pairs (sin θ < 1e-6) fall back to linear interpolation. Returns ``z0``'s dtype.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    lead = z0.shape[0] if z0.ndim == 4 else 1
    a, b = z0.double().reshape(lead, -1), z1.double().reshape(lead, -1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("slerp is undefined for a zero vector")
    theta = torch.arccos(((a * b).sum(dim=1) / (na * nb)).clamp(-1.0, 1.0))
    s = torch.sin(theta)
    small = s < 1e-6
    s_safe = torch.where(small, torch.ones_like(s), s)
    al = float(alpha)
    w0 = torch.where(small, torch.full_like(s, 1.0 - al), torch.sin((1.0 - al) * theta) / s_safe)
    w1 = torch.where(small, torch.full_like(s, al), torch.sin(al * theta) / s_safe)
    return (w0[:, None] * a + w1[:, None] * b).reshape(z0.shape).to(z0.dtype)


def _repeat_labels(labels: torch.Tensor | None, k: int) -> torch.Tensor | None:
    if labels is None:
        return None
    lab = torch.as_tensor(labels).reshape(-1)
    return lab if lab.numel() == 1 else lab.repeat(k)


@old_keywords(steps="grid_size")
@torch.no_grad()
def interpolate(den: DenoiseFn, z0: torch.Tensor, z1: torch.Tensor, alphas: Sequence[float],
                ts: Sequence[int], grid_size: int, generator: Rng,
                class_labels: torch.Tensor | None = None, *, dropout_rng: Rng = None,
                callback: Callback | None = None, frame_batch: int | None = None) -> torch.Tensor:
    """Frames along the slerp path between two starting noises (paper Figure 6 / Section 6).

    ``z0``, ``z1``: [B, 3, H, W] (or [3, H, W]) noises already times sigma_max. Frame k starts from
    ``slerp(z0, z1, alphas[k])`` and runs :func:`edit_loop` (no replacement) with the same ``ts`` and
    the SAME per-step noise for every frame: one draw of ``z0``'s shape per step from ``generator``,
    as :func:`cm_core.sampling.multistep` would make. So alpha 0 / 1 reproduce
    ``multistep(den, z0 | z1, ts, grid_size, <generator with the same seed>)`` (and ``onestep``
    when ``ts = (0, grid_size - 1)``). ``class_labels`` are per image of the batch and shared by all frames.
    Frames are evaluated ``frame_batch`` at a time (default: all at once).
    Returns [K, B, 3, H, W] (or [K, 3, H, W] for 3-D inputs) in [-1, 1], K = len(alphas).
    """
    single = z0.ndim == 3
    a, b = (z0[None], z1[None]) if single else (z0, z1)
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"z0 and z1 must both be [B, C, H, W] (or [C, H, W]) of one shape, got "
                         f"{tuple(z0.shape)} and {tuple(z1.shape)}")
    alist = [float(al) for al in alphas]
    if not alist:
        raise ValueError("alphas is empty: give e.g. torch.linspace(0, 1, 8).tolist()")
    smin, smax = sigma_range(den)
    sig = ts_to_sigmas(ts, grid_size, sigma_min=smin, sigma_max=smax)
    noises = torch.stack([noise_like(a, generator) for _ in range(len(sig) - 1)])
    frames = torch.stack([slerp(a, b, al) for al in alist])
    k_all, bsz = frames.shape[:2]
    chunk = max(1, int(frame_batch or k_all))
    outs = []
    for k0 in range(0, k_all, chunk):
        k = min(chunk, k_all - k0)
        x = frames[k0:k0 + k].reshape(k * bsz, *a.shape[1:])
        out = run_loop(den, x, sig, generator, None, _repeat_labels(class_labels, k),
                       dropout_rng=dropout_rng, callback=callback, noise=noises.repeat(1, k, 1, 1, 1))
        outs.append(out.clamp(-1, 1).reshape(k, *a.shape))
    res = torch.cat(outs)
    return res[:, 0] if single else res


# ----------------------------------------------------------------------------- denoise / SDEdit
def _sub_schedule(den: Any, sigma: float, num_evals: int) -> list[float]:
    """``num_evals + 1`` Karras levels (rho 7) from ``sigma`` (clipped to the model's range) down
    to sigma_min: ``num_evals`` evaluations."""
    if int(num_evals) != num_evals or num_evals < 1:
        raise ValueError(f"num_evals must be an integer >= 1, got {num_evals!r}")
    if not math.isfinite(float(sigma)) or float(sigma) < 0:
        raise ValueError(f"sigma must be a finite noise level >= 0, got {sigma!r}")
    smin, smax = sigma_range(den)
    start = min(max(float(sigma), smin), smax)
    sig = karras_sigmas(int(num_evals) + 1, smin, start, append_zero=False)
    return [start] + sig[1:-1] + [smin]  # the endpoints exactly, not up to float rounding


@old_keywords(num_steps="num_evals")
@torch.no_grad()
def denoise(den: DenoiseFn, noisy: torch.Tensor, sigma: float, generator: Rng = None,
            class_labels: torch.Tensor | None = None, *, num_evals: int = 1,
            dropout_rng: Rng = None, callback: Callback | None = None) -> torch.Tensor:
    """Denoise a noisy photo: ``noisy`` [B, 3, H, W] = clean + N(0, sigma^2) in [-1, 1] units
    (a noise std of s grey levels out of 255 is ``sigma = 2 s / 255``).

    The loop starts at ``sigma`` itself (clipped to [sigma_min, sigma_max]): one step is
    ``clamp(D(noisy, sigma), -1, 1)`` and draws no noise when ``generator`` is None; more steps
    continue Algorithm 4 on Karras levels from ``sigma`` to sigma_min (needs a ``generator``).
    Returns [B, 3, H, W] in [-1, 1].
    """
    if num_evals != 1 and generator is None:
        raise ValueError("denoise with num_evals > 1 adds noise between steps: pass a generator")
    sig = _sub_schedule(den, sigma, num_evals)
    out = run_loop(den, noisy, sig, generator, None, class_labels, dropout_rng=dropout_rng,
                   callback=callback)
    return out.clamp(-1, 1)


@old_keywords(num_steps="num_evals")
@torch.no_grad()
def stroke_guided(den: DenoiseFn, strokes: torch.Tensor, sigma: float, num_evals: int,
                  generator: Rng, class_labels: torch.Tensor | None = None, *,
                  dropout_rng: Rng = None, callback: Callback | None = None) -> torch.Tensor:
    """Stroke-guided generation (SDEdit, Meng et al. 2022, with a consistency model).

    ``strokes``: [B, 3, H, W] rough painting in [-1, 1]. ``x = strokes + sigma * z`` (the first draw
    from ``generator``), then ``num_evals`` steps of Algorithm 4 without replacement on Karras levels
    from ``sigma`` to sigma_min (one more draw per step). Larger ``sigma`` follows the strokes less.
    Returns [B, 3, H, W] in [-1, 1].
    """
    sig = _sub_schedule(den, sigma, num_evals)
    x = strokes + noise_like(strokes, generator) * sig[0]
    out = run_loop(den, x, sig, generator, None, class_labels, dropout_rng=dropout_rng,
                   callback=callback)
    return out.clamp(-1, 1)
