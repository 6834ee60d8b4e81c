"""Editing requests: colorize, inpaint, super-resolution, denoising and stroke-guided generation.

Each function checks its raw parameters (numbers or text, as a web form or an API client sends
them) once and builds the editor's request (:mod:`cm_core.editing.picture_editors`); :func:`run`
executes any request on the cached model (out-of-memory handling included) and returns an
:class:`~cm_core.editing.picture_editors.EditResult`. Pictures are PIL images or files; masks mark where to EDIT.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import torch
from PIL import Image

from ..accel.verify import describe_path
from ..editing import picture_editors as P
from ..editing.pictures import load_image, mask_array
from ..models.denoiser import Denoiser
from ..models.registry import ModelSpec, get_spec
from ..sampling.generate import model_ts
from .classes import parse_class
from .model_cache import cache
from .params import _flag, _int, _number, parse_ts
from .progress import Progress, _progress_callback
from .settings import MAX_SEED

T = TypeVar("T")


def picture(value: Any, what: str) -> Image.Image:
    """An upload (PIL image, path, bytes or array) as an RGB picture; none is a clear error."""
    if value is None:
        raise ValueError(f"no image: upload {what} first")
    return load_image(value)


def editable(model: Any) -> ModelSpec:
    """The registry entry of ``model``, which must be a consistency model."""
    spec = get_spec(str(model))
    if spec.kind != "cm":
        raise ValueError(f"{spec.name} is an EDM teacher: {P.EDITING_NEEDS_A_CM}")
    return spec


def common(spec: ModelSpec, seed: Any, class_label: Any) -> dict[str, Any]:
    """The checked seed and class of a request."""
    return {"seed": _int("seed", seed, 0, MAX_SEED), "class_label": parse_class(spec, class_label)}


def scheduled(spec: ModelSpec, steps: Any, ts: Any) -> dict[str, Any]:
    """The checked ``ts`` and ``grid_size``: explicit ``ts`` text, else ``steps`` evaluations."""
    tsv, grid = parse_ts(ts, spec.grid_size)
    if tsv is None:
        n = _int("steps", steps if steps not in (None, "") else spec.edit_steps, 1, spec.grid_size - 1)
        tsv, grid = model_ts(spec, n)
    return {"ts": tsv, "grid_size": grid}


def on_model(spec: ModelSpec, fn: Callable[[ModelSpec, Denoiser, Callable | None], T], label: str,
             progress: Progress | None = None) -> tuple[T, float, str]:
    """(``fn(spec, den, callback)`` on the cached model without gradients, its seconds, the path
    that served it); ``label`` names the steps on the progress bar."""
    cb = _progress_callback(progress, label)

    def go(spec: ModelSpec, den: Denoiser) -> tuple[T, float, str]:
        t = time.perf_counter()
        with torch.no_grad():
            out = fn(spec, den, cb)
        return out, time.perf_counter() - t, describe_path(den, 1)
    return cache().run(spec.name, go)


def run(spec: ModelSpec, request: P.PictureEdit, progress: Progress | None = None) -> P.EditResult:
    """Any edit request on ``spec``'s cached model (what depends on the model is checked first,
    before the model loads)."""
    request = request.resolved(spec)
    out, secs, path = on_model(spec, lambda s, d, cb: P.run_edit(d, s, request, cb), request.label, progress)
    return replace(out, seconds=secs, path=path)


def colorize(model: str, image: Any, *, steps: Any = 2, ts: Any = None, seed: Any = 0,
             class_label: Any = None, progress: Progress | None = None) -> P.EditResult:
    """Colorize an image (its luminance is kept)."""
    spec = editable(model)
    return run(spec, P.Colorize(image=picture(image, "an image to colorize"), **common(spec, seed, class_label),
                              **scheduled(spec, steps, ts)), progress)


def inpaint(model: str, image: Any, mask: Any, *, steps: Any = 2, ts: Any = None, seed: Any = 0,
            class_label: Any = None, progress: Progress | None = None) -> P.EditResult:
    """Regenerate where ``mask`` marks (non-zero / non-transparent = regenerate there; of the
    image's size or of the model's)."""
    spec = editable(model)
    img = picture(image, "an image to inpaint")
    if mask is None:
        raise ValueError("no mask: paint over the region to regenerate with the brush")
    return run(spec, P.Inpaint(image=img, mask=mask_array(mask), **common(spec, seed, class_label),
                             **scheduled(spec, steps, ts)), progress)


def super_resolve(model: str, image: Any, *, low_res: bool = False, patch_size: Any = 4,
                  steps: Any = 2, ts: Any = None, seed: Any = 0, class_label: Any = None,
                  progress: Progress | None = None) -> P.EditResult:
    """Super-resolution by ``patch_size``: the upload is fitted to (size / p)^2 either way;
    ``low_res`` says it is meant as that low-resolution input (the caption says how it fitted)."""
    spec = editable(model)
    img = picture(image, "an image to super-resolve")
    p = _int("patch factor", patch_size, 1, spec.resolution)
    return run(spec, P.SuperResolve(image=img, patch_size=p, low_res=_flag("is_low_res", low_res),
                                  **common(spec, seed, class_label), **scheduled(spec, steps, ts)), progress)


def denoise(model: str, image: Any, *, noise_level: Any = 40, add_noise: bool = True,
            steps: Any = 1, seed: Any = 0, class_label: Any = None,
            progress: Progress | None = None) -> P.EditResult:
    """Denoise an image whose noise std is ``noise_level`` grey levels (0 and not ``add_noise``:
    estimate it). With ``add_noise``, that much Gaussian noise (from ``seed``) is added first."""
    spec = editable(model)
    img = picture(image, "an image to denoise")
    level = _number("noise level", noise_level, 0, 255, " grey levels")
    n, add = _int("steps", steps, 1, 16), _flag("add_noise", add_noise)
    std = None if (level == 0 and not add) else level
    return run(spec, P.Denoise(image=img, noise_std=std, add_noise=level if add else 0.0, num_evals=n,
                             **common(spec, seed, class_label)), progress)


def stroke_guided(model: str, image: Any, *, sigma: Any = 4.0, steps: Any = 2, seed: Any = 0,
                  class_label: Any = None, progress: Progress | None = None) -> P.EditResult:
    """SDEdit: a rough painting plus noise of level ``sigma`` (0.01 to the model's sigma_max;
    larger follows the strokes less), then ``steps`` consistency steps."""
    spec = editable(model)
    img = picture(image, "a rough painting")
    sg = _number("sigma", sigma, 0.01, spec.sigma_max)
    return run(spec, P.StrokeGuided(image=img, sigma=sg, num_evals=_int("steps", steps, 1, 16),
                                  **common(spec, seed, class_label)), progress)
