"""Editing requests: colorize, inpaint, super-resolution, denoising and stroke-guided generation.

Each validates its parameters, fits the upload to the model, runs the edit through the model
cache (out-of-memory handling included) and returns an :class:`EditResult`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..accel.verify import describe_path
from ..models.denoiser import Denoiser
from ..models.messages import quote
from ..models.registry import ModelSpec, get_spec
from .classes import parse_class
from .model_cache import cache
from .params import _flag, _int, parse_ts
from .progress import Progress, _progress_callback
from .settings import MAX_SEED


@dataclass
class EditResult:
    input: Image.Image       # the upload as fitted to the model (square, model resolution)
    reference: Image.Image   # what the model was actually constrained to
    output: Image.Image
    seconds: float
    description: str
    path: str = ""           # which path served and its measured error (cm_core.accel.verify)

    def summary(self) -> str:
        return f"{self.description}: {self.seconds:.3f} s" + (f"; {self.path}" if self.path else "")


def _editor_image(value: Any, what: str) -> Any:
    """The picture of an upload or of a Gradio ImageEditor value (its background / composite)."""
    if value is None:
        raise ValueError(f"no image: upload {what} first")
    if isinstance(value, dict):
        img = value.get("background")
        if img is None:
            img = value.get("composite")
        if img is None:
            raise ValueError(f"no image: upload {what} first (the editor is empty)")
        return img
    return value


def _schedule(spec: ModelSpec, steps: Any, ts: Any) -> dict[str, Any]:
    """Keyword arguments (num_steps / ts / steps) for the edit wrappers, validated."""
    if spec.kind != "cm":
        raise ValueError(f"{spec.name} is an EDM teacher: editing needs a consistency model "
                         f"(a cd_* or ct_* model)")
    tsv, grid = parse_ts(ts, spec.steps)
    if tsv is not None:
        return {"ts": tsv, "steps": grid}
    default = spec.edit_steps
    return {"num_steps": _int("steps", steps if steps not in (None, "") else default, 1, spec.steps - 1)}


def _describe(kw: dict[str, Any]) -> str:
    if "ts" in kw:
        return f"ts {','.join(map(str, kw['ts']))} on a {kw['steps']}-point grid"
    return f"{kw['num_steps']} step(s)"


def _run_edit(model: str, fn: Callable[[ModelSpec, Denoiser, Callable | None], tuple],
              progress: Progress | None, label: str) -> tuple[Any, float, str]:
    cb = _progress_callback(progress, label)

    def run(spec: ModelSpec, den: Denoiser) -> tuple[Any, float, str]:
        t = time.perf_counter()
        with torch.no_grad():
            res = fn(spec, den, cb)
        return res, time.perf_counter() - t, describe_path(den, 1)
    get_spec(str(model))
    return cache().run(str(model), run)


def _fitted(spec: ModelSpec, image: Any) -> Image.Image:
    from ..editing.pictures import prepare_image
    return prepare_image(image, spec.resolution)


def colorize(model: str, image: Any, *, steps: Any = 2, ts: Any = None, seed: Any = 0,
             class_label: Any = None, progress: Progress | None = None) -> EditResult:
    """Colorize an image (its luminance is kept)."""
    from ..editing.picture_editors import colorize_image
    spec = get_spec(str(model))
    img = _editor_image(image, "an image to colorize")
    kw, sd, lab = _schedule(spec, steps, ts), _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    (out, ref), secs, path = _run_edit(model, lambda s, d, cb: colorize_image(
        d, s, img, seed=sd, class_label=lab, callback=cb, **kw), progress, "colorize step")
    return EditResult(_fitted(spec, img), ref, out, secs, f"colorized with {_describe(kw)}", path=path)


def inpaint(model: str, editor: Any, *, mask: Any = None, steps: Any = 2, ts: Any = None,
            seed: Any = 0, class_label: Any = None, progress: Progress | None = None) -> EditResult:
    """Regenerate the painted region. ``editor``: a Gradio ImageEditor value (background + painted
    layers) or an image, with ``mask`` (non-zero / non-transparent = regenerate there)."""
    from ..editing.picture_editors import inpaint_image
    spec = get_spec(str(model))
    img = _editor_image(editor, "an image to inpaint")
    m = mask if mask is not None else editor
    if not isinstance(m, dict) and m is editor:
        raise ValueError("no mask: paint over the region to regenerate with the brush")
    kw, sd, lab = _schedule(spec, steps, ts), _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    (out, ref), secs, path = _run_edit(model, lambda s, d, cb: inpaint_image(
        d, s, img, m, seed=sd, class_label=lab, callback=cb, **kw), progress, "inpaint step")
    shown = _editor_image({"background": editor.get("composite"), "composite": None}, "") \
        if isinstance(editor, dict) and editor.get("composite") is not None else img
    return EditResult(_fitted(spec, shown), ref, out, secs, f"inpainted with {_describe(kw)}", path=path)


def super_resolve(model: str, image: Any, *, low_res: bool = False, patch_size: Any = 4,
                  steps: Any = 2, ts: Any = None, seed: Any = 0, class_label: Any = None,
                  progress: Progress | None = None) -> EditResult:
    """Super-resolution by ``patch_size``: a high-resolution upload is downsampled to
    (size / p)^2 first; a low-resolution one is used as the low-resolution input directly."""
    from ..editing.picture_editors import super_resolve_image
    from ..editing.pictures import load_image, to_rgb
    spec = get_spec(str(model))
    img = load_image(_editor_image(image, "an image to super-resolve"))  # read once, used three times
    low_res = _flag("is_low_res", low_res)
    p = _int("patch factor", patch_size, 1, spec.resolution)
    if spec.resolution % p:
        raise ValueError(f"the patch factor must divide the model size {spec.resolution}, got {p}")
    kw, sd, lab = _schedule(spec, steps, ts), _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    (out, ref), secs, path = _run_edit(model, lambda s, d, cb: super_resolve_image(
        d, s, img, patch_size=p, seed=sd, class_label=lab, callback=cb, **kw), progress, "super-resolution step")
    shown = to_rgb(img) if low_res else _fitted(spec, img).resize(
        (spec.resolution // p,) * 2, Image.Resampling.BOX)
    low = shown.resize((spec.resolution,) * 2, Image.Resampling.NEAREST) if shown.size[0] != spec.resolution else shown
    return EditResult(low, ref, out, secs, f"x{p} super-resolution ({spec.resolution // p} px -> "
                      f"{spec.resolution} px) with {_describe(kw)}; {_sr_fitting(spec, img.size, p, low_res)}", path=path)


def _sr_fitting(spec: ModelSpec, size: tuple[int, int], p: int, low_res: bool) -> str:
    """How an upload of ``size`` became the low-resolution input (fitted to (size / p)^2 either way)."""
    w, h = size
    n = spec.resolution // p
    if (w, h) == (n, n):
        return f"the {w}x{h} upload is the low-resolution input as it is"
    how = "resized" if w == h else "centre-cropped and resized"
    text = f"the {w}x{h} upload was {how} to {n}x{n}, the low-resolution grid of x{p} on {spec.resolution} px"
    side = min(w, h)
    if low_res and side < spec.resolution and spec.resolution % side == 0:
        text += f" (patch factor {spec.resolution // side} would use it as it is)"
    elif low_res:
        text += f" (a low-resolution upload for x{p} is {n} px)"
    return text


def denoise(model: str, image: Any, *, noise_level: Any = 40, add_noise: bool = True,
            steps: Any = 1, seed: Any = 0, class_label: Any = None,
            progress: Progress | None = None) -> EditResult:
    """Denoise an image whose noise std is ``noise_level`` grey levels (0 and not ``add_noise``:
    estimate it). With ``add_noise``, that much Gaussian noise (from ``seed``) is added first."""
    from ..editing.picture_editors import denoise_image
    spec = get_spec(str(model))
    img = _editor_image(image, "an image to denoise")
    try:
        level = float(noise_level)
    except (TypeError, ValueError):
        raise ValueError(f"noise level must be a number of grey levels, got {quote(noise_level)}") from None
    if not 0 <= level <= 255:
        raise ValueError(f"noise level must be in [0, 255] grey levels, got {level}")
    n, add_noise = _int("steps", steps, 1, 16), _flag("add_noise", add_noise)
    sd, lab = _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    _schedule(spec, 1, None)  # EDM check
    fitted = _fitted(spec, img)
    noisy = fitted
    if add_noise and level > 0:
        rng = np.random.default_rng(sd)
        a = np.asarray(fitted, np.float32) + rng.normal(0.0, level, (spec.resolution, spec.resolution, 3))
        noisy = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    std = None if (level == 0 and not add_noise) else level
    (out, ref), secs, path = _run_edit(model, lambda s, d, cb: denoise_image(
        d, s, noisy, noise_std=std, num_steps=n, seed=sd, class_label=lab, callback=cb),
        progress, "denoise step")
    what = "estimated noise" if std is None else f"noise std {level:g}/255"
    return EditResult(fitted, ref, out, secs, f"denoised ({what}, {n} step(s))", path=path)


def stroke_guided(model: str, editor: Any, *, sigma: Any = 4.0, steps: Any = 2, seed: Any = 0,
                  class_label: Any = None, progress: Progress | None = None) -> EditResult:
    """SDEdit: a rough painting plus noise of level ``sigma`` (0.1-80; larger follows the strokes
    less), then ``steps`` consistency steps."""
    from ..editing.picture_editors import stroke_image
    spec = get_spec(str(model))
    if isinstance(editor, dict):
        img = editor.get("composite") if editor.get("composite") is not None else editor.get("background")
        if img is None:
            raise ValueError("no painting: paint strokes or upload a rough painting first")
    else:
        img = _editor_image(editor, "a rough painting")
    try:
        sg = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a number, got {quote(sigma)}") from None
    if not 0.01 <= sg <= spec.sigma_max:
        raise ValueError(f"sigma must be in [0.01, {spec.sigma_max:g}], got {sg}")
    n = _int("steps", steps, 1, 16)
    sd, lab = _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    _schedule(spec, 1, None)
    (out, ref), secs, path = _run_edit(model, lambda s, d, cb: stroke_image(
        d, s, img, sigma=sg, num_steps=n, seed=sd, class_label=lab, callback=cb), progress, "step")
    return EditResult(_fitted(spec, img), ref, out, secs, f"stroke-guided (SDEdit) from sigma {sg:g}, {n} step(s)", path=path)
