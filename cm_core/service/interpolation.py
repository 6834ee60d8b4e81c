"""Interpolation requests: frames between two seeds' samples or between two images, plus a GIF."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..editing.picture_editors import describe_schedule, interpolate_images
from ..editing.pictures import fit_image
from ..models.denoiser import Denoiser
from ..models.messages import quote
from ..models.registry import ModelSpec
from ..sampling.runner import run_loop
from .classes import parse_class
from .edits import editable, on_model, picture, scheduled
from .params import _int
from .progress import Progress
from .settings import MAX_SEED, max_batch


@dataclass
class InterpolationResult:
    frames: list[Image.Image]
    captions: list[str]
    gif_path: str
    seconds: float
    description: str

    def summary(self) -> str:
        return (f"{len(self.frames)} frames in {self.seconds:.3f} s = "
                f"{len(self.frames) / max(self.seconds, 1e-9):.1f} frames/s ({self.description})")


def _gif(frames: Sequence[Image.Image], seconds_per_frame: float = 0.12) -> str:
    import tempfile
    fd, path = tempfile.mkstemp(prefix="cm-interp-", suffix=".gif")
    os.close(fd)
    big = [f.resize((max(128, f.width), max(128, f.height)), Image.Resampling.NEAREST) for f in frames]
    seq = big + big[-2:0:-1]  # ping-pong
    seq[0].save(path, save_all=True, append_images=seq[1:], duration=int(seconds_per_frame * 1000), loop=0)
    return path


def interpolate(model: str, *, mode: str = "seeds", seed_a: Any = 0, seed_b: Any = 1,
                image_a: Any = None, image_b: Any = None, frames: Any = 8, steps: Any = 1,
                ts: Any = None, class_label: Any = None, sigma: float = 4.0,
                progress: Progress | None = None) -> InterpolationResult:
    """Frames between two seeds' samples (slerp of their noises, paper Figure 6) or between two
    images' noises (each image noised to ``sigma`` with shared noise, then the same schedule)."""
    spec = editable(model)
    k = _int("frames", frames, 2, 64)
    sched, lab = scheduled(spec, steps, ts), parse_class(spec, class_label)
    how = describe_schedule(sched["ts"], sched["grid_size"], spec)
    if mode == "seeds":
        a, b = _int("seed A", seed_a, 0, MAX_SEED), _int("seed B", seed_b, 0, MAX_SEED)
        run = functools.partial(interpolate_images, seed0=a, seed1=b, num_frames=k, class_label=lab,
                                frame_batch=max_batch(), **sched)
        desc = f"seeds {a} -> {b}, {how} per frame"
    elif mode == "images":
        xa, xb = (fit_image(picture(im, what), spec.resolution) for im, what in ((image_a, "image A"), (image_b, "image B")))
        n = len(sched["ts"]) - 1
        run = functools.partial(_interp_images, xa=xa, xb=xb, k=k, label=lab, num_evals=n, sigma=sigma)
        desc = f"two images noised to sigma {sigma:g}, {n} step(s) per frame"
    else:
        raise ValueError(f"mode must be 'seeds' or 'images', got {quote(mode)}")
    outs, secs, _path = on_model(spec, lambda s, d, cb: run(d, s, callback=cb), "step", progress)
    alphas = np.linspace(0, 1, k)
    return InterpolationResult(outs, [f"alpha {x:.2f}" for x in alphas], _gif(outs), secs, desc)


def _interp_images(den: Denoiser, spec: ModelSpec, *, xa: Image.Image, xb: Image.Image, k: int,
                   label: int | None, num_evals: int, sigma: float, callback: Callable | None
                   ) -> list[Image.Image]:
    """Frame j: ``lerp(x_a, x_b, a_j) + sigma * slerp(e_a, e_b, a_j)``, then ``num_evals`` steps.

    Every frame draws the same per-step noise (one generator per frame, all with one seed), so the
    frames form a smooth path and run ``max_batch()`` at a time without changing the result."""
    from .. import editing
    from ..editing.pictures import image_to_tensor, tensor_to_images
    from ..sampling import make_generators
    from ..sampling.schedule import karras_sigmas
    dev = next(den.parameters()).device
    ta, tb = image_to_tensor(xa).to(dev), image_to_tensor(xb).to(dev)
    g = make_generators(0, 2, dev)
    ea = torch.randn(ta.shape, generator=g[0], device=dev)
    eb = torch.randn(tb.shape, generator=g[1], device=dev)
    alphas = np.linspace(0.0, 1.0, k)
    x = torch.cat([(1 - a) * ta + a * tb + sigma * editing.slerp(ea, eb, float(a)) for a in alphas])
    sig = karras_sigmas(num_evals + 1, den.sigma_min, min(sigma, den.sigma_max), append_zero=False)
    labels = None if not spec.class_cond else torch.full(
        (k,), label if label is not None else 0, dtype=torch.long, device=dev)
    out, n = [], max_batch()
    for i in range(0, k, n):
        xs = x[i:i + n]
        gens = [torch.Generator(device=dev).manual_seed(1) for _ in range(xs.shape[0])]
        lab = labels[i:i + n] if labels is not None else None
        out.append(run_loop(den, xs, sig, gens, None, lab, callback=callback).clamp(-1, 1))
    return tensor_to_images(torch.cat(out))
