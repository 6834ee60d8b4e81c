"""PIL-level editing: any uploaded image in, edited images at the model's size out.

Each wrapper reads the upload with :mod:`cm_core.editing.pictures` (first frame, RGB, alpha on white,
centre-crop to a square then resize to the model's resolution), runs the tensor-level editor of
:mod:`cm_core.editing` and returns ``(output, reference)``: the edited image and the reference the
model was actually constrained to, both RGB PIL images of the model's size. ``seed`` fixes the
starting noise, the per-step noise (``make_generators(seed, 1)``: the same stream as generation
with that seed) and, for class-conditional models without ``class_label``, the class label.
``num_steps`` evaluations use the registry's tuned ``ts`` when it has that many (``pick_ts``),
or pass ``ts`` (indices on a ``steps``-point grid) explicitly. User masks mark where to EDIT.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..models.registry import ModelSpec
from ..sampling import initial_noise, make_generators
from ..sampling.generate import labels_for
from ..sampling.schedule import pick_ts, validate_ts
from . import editors
from .pictures import (
    BACKGROUND,
    ImageEditError,
    ImageSource,
    check_edit_mask,
    fit_image,
    fit_mask,
    image_to_tensor,
    keep_mask,
    load_image,
    mask_array,
    tensor_to_images,
    to_rgb,
)

Callback = Callable[[dict], None]
SpecOrSize = ModelSpec | int


@dataclass(frozen=True)
class _Plan:
    """Everything one wrapper call needs besides the image."""

    size: int
    ts: list[int]
    steps: int
    device: torch.device
    gens: list[torch.Generator]
    labels: torch.Tensor | None


def _labels(den: editors.DenoiseFn, spec: ModelSpec | None, seed: int,
            class_label: int | None) -> torch.Tensor | None:
    n = getattr(den, "num_classes", None)
    if not n:
        return None
    if class_label is not None:
        if not 0 <= int(class_label) < n:
            raise ImageEditError(f"class_label must be in [0, {n - 1}], got {class_label}")
        return torch.tensor([int(class_label)])
    if spec is not None:
        return labels_for(spec, [seed], None)
    raise ImageEditError(f"this model is class-conditional: pass class_label in [0, {n - 1}]")


def _plan(den: editors.DenoiseFn, spec_or_size: SpecOrSize, seed: int, class_label: int | None,
          num_steps: int | None, ts: Sequence[int] | None, steps: int | None) -> _Plan:
    """Resolution, schedule, generators and labels of one call (validates them)."""
    spec = spec_or_size if isinstance(spec_or_size, ModelSpec) else None
    size = spec.resolution if spec is not None else int(spec_or_size)
    if getattr(den, "kind", "cm") != "cm":
        raise ImageEditError("editing needs a consistency model (a cd_* or ct_* model); "
                             "EDM teachers are not one-step denoisers")
    model_size = getattr(den, "image_size", None)
    if model_size and model_size != size:
        raise ImageEditError(f"the model works at {model_size} px but {size} px was asked")
    grid = int(steps or (spec.steps if spec is not None else 40))
    default = tuple(spec.ts) if spec is not None and grid == spec.steps else ()
    if ts is not None:
        validate_ts(ts, grid)
        plan_ts = [int(t) for t in ts]
    else:
        n = num_steps or (spec.edit_steps if spec is not None else max(len(default) - 1, 2))
        plan_ts = pick_ts(n, grid, default)
    dev = next(den.parameters()).device if isinstance(den, torch.nn.Module) else torch.device("cpu")
    return _Plan(size, plan_ts, grid, dev, make_generators(int(seed), 1, dev),
                 None if (lab := _labels(den, spec, int(seed), class_label)) is None
                 else lab.to(dev))


def _start(den: editors.DenoiseFn, p: _Plan) -> torch.Tensor:
    return initial_noise((1, 3, p.size, p.size), p.gens, den.sigma_max, p.device)


def _read(image: ImageSource, size: int, background: Sequence[int]
          ) -> tuple[Image.Image, tuple[int, int]]:
    """(fitted RGB image, the upload's original (W, H))."""
    img = load_image(image)
    return fit_image(to_rgb(img, background), size), img.size


def _pil(x: torch.Tensor) -> Image.Image:
    return tensor_to_images(x)[0]


def colorize_image(den: editors.DenoiseFn, spec_or_size: SpecOrSize, image: ImageSource, *,
                   seed: int = 0, num_steps: int | None = None, ts: Sequence[int] | None = None,
                   steps: int | None = None, class_label: int | None = None,
                   background: Sequence[int] = BACKGROUND, callback: Callback | None = None
                   ) -> tuple[Image.Image, Image.Image]:
    """Colorize ``image`` (colour or grey; only its luminance is kept).

    Returns (colorized RGB image, the grey reference whose luminance the output keeps).
    """
    p = _plan(den, spec_or_size, seed, class_label, num_steps, ts, steps)
    img, _ = _read(image, p.size, background)
    y = image_to_tensor(img).to(p.device)
    out = editors.colorize(den, y, _start(den, p), p.ts, p.steps, p.gens, p.labels,
                           callback=callback)
    return _pil(out), img.convert("L").convert("RGB")


def inpaint_image(den: editors.DenoiseFn, spec_or_size: SpecOrSize, image: ImageSource,
                  mask: object, *, seed: int = 0, num_steps: int | None = None,
                  ts: Sequence[int] | None = None, steps: int | None = None,
                  class_label: int | None = None, background: Sequence[int] = BACKGROUND,
                  callback: Callback | None = None) -> tuple[Image.Image, Image.Image]:
    """Regenerate the region of ``image`` that ``mask`` marks (any non-zero / non-transparent
    pixel = EDIT there; a PIL image, array, tensor or Gradio ImageEditor value, of the upload's
    size or of the model's size). Returns (output, reference with the edited region black)."""
    p = _plan(den, spec_or_size, seed, class_label, num_steps, ts, steps)
    img, orig = _read(image, p.size, background)
    edit = check_edit_mask(fit_mask(mask_array(mask), orig, p.size))
    out, ref = editors.inpaint(den, image_to_tensor(img).to(p.device), keep_mask(edit, p.device),
                               _start(den, p), p.ts, p.steps, p.gens, p.labels,
                               callback=callback, return_reference=True)
    return _pil(out), _pil(ref)


def default_patch_size(size: int) -> int:
    """8 for 256 px and above (the paper), 4 below (64 px -> a 16 x 16 low-resolution input)."""
    return 8 if size >= 256 else 4


def super_resolve_image(den: editors.DenoiseFn, spec_or_size: SpecOrSize, image: ImageSource, *,
                        patch_size: int | None = None, seed: int = 0,
                        num_steps: int | None = None, ts: Sequence[int] | None = None,
                        steps: int | None = None, class_label: int | None = None,
                        background: Sequence[int] = BACKGROUND, callback: Callback | None = None
                        ) -> tuple[Image.Image, Image.Image]:
    """Super-resolve ``image`` by ``patch_size`` p (default :func:`default_patch_size`).

    The upload is centre-cropped and resized to (size / p)^2 (the low-resolution input), then
    nearest-upsampled by p: the output's p x p patch means equal those low-resolution pixels.
    Returns (output, the blocky nearest-upsampled reference).
    """
    p = _plan(den, spec_or_size, seed, class_label, num_steps, ts, steps)
    ps = default_patch_size(p.size) if patch_size is None else patch_size
    if not isinstance(ps, (int, np.integer)) or ps < 1 or p.size % ps:
        raise ImageEditError(f"patch_size must divide the model size {p.size}; got {ps!r} "
                             f"(valid: {[d for d in range(1, p.size + 1) if p.size % d == 0]})")
    low = fit_image(to_rgb(load_image(image), background), p.size // int(ps))
    img = low.resize((p.size, p.size), Image.Resampling.NEAREST)
    out, ref = editors.super_resolve(den, image_to_tensor(img).to(p.device), _start(den, p), p.ts,
                                     p.steps, p.gens, int(ps), p.labels, callback=callback,
                                     return_reference=True)
    return _pil(out), _pil(ref)


def estimate_noise_std(image: Image.Image) -> float:
    """Noise std in grey levels (0-255) of an RGB image: the median absolute value of the finest
    diagonal Haar band over 0.6745 (Donoho's estimator); textures make it an upper bound."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    a = a[:h, :w]
    hh = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / 0.6745)


def denoise_image(den: editors.DenoiseFn, spec_or_size: SpecOrSize, image: ImageSource, *,
                  noise_std: float | None = None, num_steps: int = 1, seed: int = 0,
                  class_label: int | None = None, background: Sequence[int] = BACKGROUND,
                  callback: Callback | None = None) -> tuple[Image.Image, Image.Image]:
    """Denoise a noisy photo. ``noise_std``: the noise std in grey levels (0-255) of the image
    AFTER fitting to the model (a photo downscaled k times keeps about 1/k of its noise); None
    estimates it (:func:`estimate_noise_std`). The loop starts at sigma = 2 * noise_std / 255.
    Returns (clean estimate, the fitted noisy input)."""
    p = _plan(den, spec_or_size, seed, class_label, num_steps, None, None)
    img, _ = _read(image, p.size, background)
    std = estimate_noise_std(img) if noise_std is None else float(noise_std)
    if not np.isfinite(std) or std < 0:
        raise ImageEditError(f"noise_std must be >= 0 grey levels, got {noise_std}")
    out = editors.denoise(den, image_to_tensor(img).to(p.device), 2.0 * std / 255.0, p.gens,
                          p.labels, num_steps=num_steps, callback=callback)
    return _pil(out), img


def stroke_image(den: editors.DenoiseFn, spec_or_size: SpecOrSize, image: ImageSource, *,
                 sigma: float = 4.0, num_steps: int = 2, seed: int = 0,
                 class_label: int | None = None, background: Sequence[int] = BACKGROUND,
                 callback: Callback | None = None) -> tuple[Image.Image, Image.Image]:
    """Stroke-guided generation (SDEdit): a rough painting plus noise of ``sigma`` (larger = freer
    from the strokes), then ``num_steps`` steps. Returns (output, the fitted painting)."""
    p = _plan(den, spec_or_size, seed, class_label, num_steps, None, None)
    img, _ = _read(image, p.size, background)
    out = editors.stroke_guided(den, image_to_tensor(img).to(p.device), sigma, num_steps, p.gens,
                                p.labels, callback=callback)
    return _pil(out), img


def interpolate_images(den: editors.DenoiseFn, spec_or_size: SpecOrSize, seed0: int, seed1: int,
                       *, num_frames: int = 8, alphas: Sequence[float] | None = None,
                       num_steps: int | None = None, ts: Sequence[int] | None = None,
                       steps: int | None = None, class_label: int | None = None,
                       callback: Callback | None = None, frame_batch: int | None = None
                       ) -> list[Image.Image]:
    """Frames between the samples of ``seed0`` and ``seed1`` (slerp of their starting noises).

    All frames share seed0's per-step noise and class label, so frame 0 is exactly what
    generation with ``seed0`` gives; the last frame is seed1's sample for one-step schedules.
    ``alphas`` defaults to ``num_frames`` points evenly spaced in [0, 1]; frames run
    ``frame_batch`` at a time (default: all at once), which bounds memory, not the result.
    """
    p = _plan(den, spec_or_size, seed0, class_label, num_steps, ts, steps)
    if alphas is None:
        if num_frames < 2:
            raise ImageEditError(f"num_frames must be >= 2, got {num_frames}")
        alphas = np.linspace(0.0, 1.0, num_frames).tolist()
    z0 = _start(den, p)
    z1 = initial_noise(z0.shape, make_generators(int(seed1), 1, p.device), den.sigma_max, p.device)
    frames = editors.interpolate(den, z0, z1, alphas, p.ts, p.steps, p.gens, p.labels,
                                 callback=callback, frame_batch=frame_batch)
    return [_pil(f) for f in frames]
