"""Editing PIL pictures: one request type per editor and one runner for all of them.

A request (:class:`PictureEdit`, a frozen dataclass) holds the picture (a PIL image of any size and
mode), the seed, the class and the editor's own fields; it is checked where it is built (the
service boundary, :mod:`cm_core.service.edits`). :func:`run_edit` fits the picture to the model
(RGB with alpha on white, centre crop, resize), lets the request run its tensor editor
(:mod:`.editors`: the transform ``A`` of paper Algorithm 4 and what it keeps) and returns the
images and a caption. A new editor is one transform and one request type.

``seed`` fixes the starting noise, the per-step noise (``make_generators(seed, 1)``, as generation)
and, for class-conditional models without ``class_label``, the class. ``ts`` are indices on a
``grid_size``-point Karras grid (None: the model's edit schedule). Masks mark where to EDIT.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ..models.messages import old_keywords
from ..models.registry import ModelSpec
from ..sampling import initial_noise, make_generators
from ..sampling.generate import labels_for, model_ts
from . import editors
from .pictures import (
    ImageEditError,
    check_edit_mask,
    estimate_noise_std,
    fit_image,
    fit_mask,
    image_to_tensor,
    keep_mask,
    tensor_to_images,
    to_rgb,
)

Callback = Callable[[dict], None]
Reference = torch.Tensor | Image.Image
SpecOrSize = ModelSpec | int
EDITING_NEEDS_A_CM = "editing needs a consistency model (a cd_* or ct_* model); EDM teachers are not one-step denoisers"


def _spec_and_size(spec_or_size: SpecOrSize) -> tuple[ModelSpec | None, int]:
    """(registry entry or None, resolution) of a model given by its entry or its resolution."""
    if isinstance(spec_or_size, ModelSpec):
        return spec_or_size, spec_or_size.resolution
    return None, int(spec_or_size)


def describe_schedule(ts: Sequence[int], grid_size: int, spec: ModelSpec | None) -> str:
    """"3 step(s)" for the model's own schedule, else "ts 0,22,39 on a 40-point grid"."""
    if spec is not None and (tuple(ts), grid_size) == model_ts(spec, len(ts) - 1):
        return f"{len(ts) - 1} step(s)"
    return f"ts {','.join(map(str, ts))} on a {grid_size}-point grid"


@dataclass(frozen=True)
class EditResult:
    """RGB images of the model's size, a caption, and (from the service) seconds and path."""

    input: Image.Image      # the picture as fitted (the "before" of a before/after view)
    reference: Image.Image  # what the model was constrained to
    output: Image.Image
    description: str
    seconds: float = 0.0
    path: str = ""          # which path served and its measured error (cm_core.accel.verify)

    def summary(self) -> str:
        return f"{self.description}: {self.seconds:.3f} s" + (f"; {self.path}" if self.path else "")


@dataclass(frozen=True, kw_only=True)
class PictureEdit:
    """One edit of ``image``; a subclass adds its fields, :meth:`edit` and :meth:`caption`."""

    image: Image.Image
    seed: int = 0
    class_label: int | None = None
    label: ClassVar[str] = "step"  # what a progress bar counts

    def resolved(self, spec_or_size: SpecOrSize) -> PictureEdit:
        """The request with its model-dependent defaults filled in (and checked)."""
        return self

    def picture(self, size: int) -> Image.Image:
        """The picture the editor starts from, RGB ``size`` x ``size``; :meth:`shown` shows it."""
        return fit_image(to_rgb(self.image), size)

    def shown(self, size: int) -> Image.Image:
        return self.picture(size)

    def edit(self, den: editors.DenoiseFn, y: torch.Tensor, gens: list[torch.Generator],
             labels: torch.Tensor | None, callback: Callback | None) -> tuple[torch.Tensor, Reference]:
        """(output [1, 3, R, R] in [-1, 1], reference) from the fitted picture ``y`` [1, 3, R, R]."""
        raise NotImplementedError

    def caption(self, spec: ModelSpec | None) -> str:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class ScheduledEdit(PictureEdit):
    """Algorithm 4 from ``sigma_max`` noise over grid points ``ts`` (None: the model's schedule)."""

    ts: tuple[int, ...] | None = None
    grid_size: int | None = None
    verb: ClassVar[str] = "edited"

    def resolved(self, spec_or_size: SpecOrSize) -> ScheduledEdit:
        spec, _ = _spec_and_size(spec_or_size)
        ts, grid = model_ts(spec, spec.edit_steps if spec is not None else 2, self.ts, self.grid_size)
        return replace(self, ts=ts, grid_size=grid)

    def start(self, den: editors.DenoiseFn, y: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """``sigma_max`` times the seed generator's first draw, of ``y``'s shape."""
        return initial_noise(tuple(y.shape), gens, den.sigma_max, y.device)

    def caption(self, spec: ModelSpec | None) -> str:
        return f"{self.verb} with {describe_schedule(self.ts or (), self.grid_size or 0, spec)}"


def run_edit(den: editors.DenoiseFn, spec_or_size: SpecOrSize, request: PictureEdit,
             callback: Callback | None = None) -> EditResult:
    """Run any edit request on ``den``. ``spec_or_size``: the model's registry entry, or its
    resolution for a model outside the registry (a class-conditional one then needs ``class_label``)."""
    spec, size, dev = _target(den, spec_or_size)
    request = request.resolved(spec_or_size)
    y = image_to_tensor(request.picture(size)).to(dev)
    out, ref = request.edit(den, y, make_generators(int(request.seed), 1, dev),
                            _labels(den, spec, request.seed, request.class_label, dev), callback)
    return EditResult(request.shown(size), ref if isinstance(ref, Image.Image) else _pil(ref), _pil(out),
                      request.caption(spec))


def _target(den: editors.DenoiseFn, spec_or_size: SpecOrSize) -> tuple[ModelSpec | None, int, torch.device]:
    """(registry entry or None, resolution, device) of an edit on ``den``."""
    spec, size = _spec_and_size(spec_or_size)
    if getattr(den, "kind", "cm") != "cm":
        raise ImageEditError(EDITING_NEEDS_A_CM)
    if getattr(den, "image_size", None) not in (None, size):
        raise ImageEditError(f"the model works at {den.image_size} px but {size} px was asked")  # type: ignore[attr-defined]
    dev = next(den.parameters()).device if isinstance(den, torch.nn.Module) else torch.device("cpu")
    return spec, size, dev


def _labels(den: editors.DenoiseFn, spec: ModelSpec | None, seed: int, class_label: int | None,
            device: torch.device) -> torch.Tensor | None:
    """[1]: the class, or the one ``seed`` draws (as generation does); None if unconditional."""
    n = getattr(den, "num_classes", None)
    if not n:
        return None
    if spec is None and class_label is None:
        raise ImageEditError(f"this model is class-conditional: pass class_label in [0, {n - 1}]")
    lab = labels_for(spec, [seed], class_label) if spec is not None else torch.tensor([int(class_label)])  # type: ignore[arg-type]
    return lab.to(device)  # type: ignore[union-attr]


def _pil(x: torch.Tensor) -> Image.Image:
    return tensor_to_images(x)[0]


# ----------------------------------------------------------------------------- the editors
@dataclass(frozen=True, kw_only=True)
class Colorize(ScheduledEdit):
    """Keep the picture's luminance, generate its colours. Reference: the grey picture."""

    label: ClassVar[str] = "colorize step"
    verb: ClassVar[str] = "colorized"

    def edit(self, den, y, gens, labels, callback):
        out = editors.colorize(den, y, self.start(den, y, gens), self.ts, self.grid_size, gens, labels,
                               callback=callback)
        return out, _pil(y).convert("L").convert("RGB")


@dataclass(frozen=True, kw_only=True)
class Inpaint(ScheduledEdit):
    """Regenerate where ``mask`` (bool [H, W], True = edit; of the image's size, fitted with the
    same crop, or of the model's) marks; shown tinted magenta. Reference: that region black."""

    mask: np.ndarray = field(compare=False)
    label: ClassVar[str] = "inpaint step"
    verb: ClassVar[str] = "inpainted"

    def edit_mask(self, size: int) -> np.ndarray:
        return check_edit_mask(fit_mask(self.mask, self.image.size, size))

    def shown(self, size: int) -> Image.Image:
        pic = np.asarray(self.picture(size), np.float32)
        tinted = np.where(self.edit_mask(size)[..., None], 0.5 * pic + (127.5, 0, 127.5), pic)
        return Image.fromarray(np.rint(tinted).astype(np.uint8))

    def edit(self, den, y, gens, labels, callback):
        return editors.inpaint(den, y, keep_mask(self.edit_mask(y.shape[-1]), y.device), self.start(den, y, gens),
                               self.ts, self.grid_size, gens, labels, callback=callback, return_reference=True)


@dataclass(frozen=True, kw_only=True)
class SuperResolve(ScheduledEdit):
    """x``patch_size`` super-resolution (None: 8 from 256 px up, as the paper, else 4): the picture
    fitted to (size / p)^2 is the low-resolution input, which the output's p x p patch means equal.
    ``low_res``: the upload is meant as that input (the caption says how it fitted)."""

    patch_size: int | None = None
    low_res: bool = False
    label: ClassVar[str] = "super-resolution step"

    def resolved(self, spec_or_size: SpecOrSize) -> SuperResolve:
        _, size = _spec_and_size(spec_or_size)
        p = self.patch_size or (8 if size >= 256 else 4)
        if p < 1 or size % p:
            raise ImageEditError(f"patch_size must divide the model size {size}; got {self.patch_size} "
                                 f"(valid: {[d for d in range(1, size + 1) if size % d == 0]})")
        return replace(super().resolved(spec_or_size), patch_size=p)  # type: ignore[return-value]

    def picture(self, size: int) -> Image.Image:
        low = super().picture(size // self.patch_size)  # type: ignore[operator]
        return low.resize((size, size), Image.Resampling.NEAREST)

    def edit(self, den, y, gens, labels, callback):
        return editors.super_resolve(den, y, self.start(den, y, gens), self.ts, self.grid_size, gens,
                                     self.patch_size, labels, callback=callback, return_reference=True)

    def caption(self, spec: ModelSpec | None) -> str:
        p, size, (w, h) = int(self.patch_size or 1), spec.resolution if spec else 0, self.image.size
        n, side = size // p, min(w, h)
        text = f"x{p} super-resolution ({n} px -> {size} px) with {describe_schedule(self.ts or (), self.grid_size or 0, spec)}; "
        if (w, h) == (n, n):
            return text + f"the {w}x{h} upload is the low-resolution input as it is"
        text += (f"the {w}x{h} upload was {'resized' if w == h else 'centre-cropped and resized'} to {n}x{n}, "
                 f"the low-resolution grid of x{p} on {size} px")
        if self.low_res and side < size and size % side == 0:
            return text + f" (patch factor {size // side} would use it as it is)"
        return text + (f" (a low-resolution upload for x{p} is {n} px)" if self.low_res else "")


@dataclass(frozen=True, kw_only=True)
class Denoise(PictureEdit):
    """Denoise a photo with noise std ``noise_std`` grey levels AFTER fitting (a photo downscaled k
    times keeps about 1/k of its noise; None: :func:`estimate_noise_std`), from sigma =
    2 noise_std / 255 in ``num_evals`` steps, after adding ``add_noise`` grey levels of Gaussian
    noise (from ``seed``) to the fitted picture. Shown: the clean picture; reference: the noisy one."""

    noise_std: float | None = None
    add_noise: float = 0.0
    num_evals: int = 1
    label: ClassVar[str] = "denoise step"

    def picture(self, size: int) -> Image.Image:
        fitted = super().picture(size)
        if self.add_noise <= 0:
            return fitted
        noise = np.random.default_rng(self.seed).normal(0.0, self.add_noise, (size, size, 3))
        return Image.fromarray(np.clip(np.rint(np.asarray(fitted, np.float32) + noise), 0, 255).astype(np.uint8))

    def shown(self, size: int) -> Image.Image:
        return super().picture(size)

    def edit(self, den, y, gens, labels, callback):
        std = estimate_noise_std(_pil(y)) if self.noise_std is None else float(self.noise_std)
        return editors.denoise(den, y, 2 * std / 255, gens, labels, num_evals=self.num_evals, callback=callback), y

    def caption(self, spec: ModelSpec | None) -> str:
        what = "estimated noise" if self.noise_std is None else f"noise std {self.noise_std:g}/255"
        return f"denoised ({what}, {self.num_evals} step(s))"


@dataclass(frozen=True, kw_only=True)
class StrokeGuided(PictureEdit):
    """SDEdit: the rough painting plus noise of ``sigma`` (larger = freer from the strokes), then
    ``num_evals`` steps. Reference: the fitted painting."""

    sigma: float = 4.0
    num_evals: int = 2

    def edit(self, den, y, gens, labels, callback):
        return editors.stroke_guided(den, y, self.sigma, self.num_evals, gens, labels, callback=callback), y

    def caption(self, spec: ModelSpec | None) -> str:
        return f"stroke-guided (SDEdit) from sigma {self.sigma:g}, {self.num_evals} step(s)"


@old_keywords(num_steps="num_evals", steps="grid_size")
def interpolate_images(den: editors.DenoiseFn, spec_or_size: SpecOrSize, seed0: int, seed1: int, *,
                       num_frames: int = 8, alphas: Sequence[float] | None = None, num_evals: int | None = None,
                       ts: Sequence[int] | None = None, grid_size: int | None = None,
                       class_label: int | None = None, callback: Callback | None = None,
                       frame_batch: int | None = None) -> list[Image.Image]:
    """Frames between the samples of ``seed0`` and ``seed1`` (slerp of their starting noises).

    All frames share seed0's per-step noise and class, so frame 0 is what generation with
    ``seed0`` gives, and the last is seed1's sample for one-step schedules. ``alphas``: default
    ``num_frames`` points evenly spaced in [0, 1]; ``frame_batch`` frames run at a time (default
    all). ``num_steps`` / ``steps``: deprecated names of ``num_evals`` / ``grid_size``.
    """
    spec, size, dev = _target(den, spec_or_size)
    ts, grid = model_ts(spec, num_evals or (spec.edit_steps if spec is not None else 2), ts, grid_size)
    if alphas is None and num_frames < 2:
        raise ImageEditError(f"num_frames must be >= 2, got {num_frames}")
    gens = make_generators(int(seed0), 1, dev)
    z0 = initial_noise((1, 3, size, size), gens, den.sigma_max, dev)
    z1 = initial_noise(z0.shape, make_generators(int(seed1), 1, dev), den.sigma_max, dev)
    alphas = np.linspace(0.0, 1.0, num_frames).tolist() if alphas is None else alphas
    frames = editors.interpolate(den, z0, z1, alphas, ts, grid, gens, _labels(den, spec, seed0, class_label, dev),
                                 callback=callback, frame_batch=frame_batch)
    return [_pil(f) for f in frames]
