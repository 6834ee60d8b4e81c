"""Generate requests: sampling (batched across requests), the teacher comparison and warm-up."""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..accel.verify import describe_path
from ..models.denoiser import Denoiser
from ..models.registry import ModelSpec
from ..sampling import generate as _generate
from ..sampling.generate import labels_for, to_uint8
from .classes import class_names
from .model_cache import cache
from .models import teacher_for
from .params import GenerateRequest, plan
from .progress import Progress, _progress_callback
from .settings import default_model


@dataclass
class GenerateResult:
    images: list[Image.Image]
    captions: list[str]
    seconds: float
    load_seconds: float
    evaluations: int
    description: str
    batched_with: int = 1  # requests that ran in the same forward batch
    extra: dict = field(default_factory=dict)
    path: str = ""  # which path served and its measured error vs fp32 (cm_core.accel.verify)

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")

    def seed_range(self) -> str:
        """``"seeds 3-6"`` (``"seed 3"`` for one image; empty when unknown)."""
        seeds = self.extra.get("seeds") or []
        if not seeds:
            return ""
        return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"

    def summary(self) -> str:
        seeds = f" ({r})" if (r := self.seed_range()) else ""
        s = (f"{len(self.images)} image(s){seeds} in {self.seconds:.3f} s = {self.images_per_second:.1f} images/s "
             f"({self.description}; {self.evaluations} network evaluation(s) per image)")
        if self.load_seconds > 0.01:
            s += f"; model loaded in {self.load_seconds:.2f} s"
        if self.batched_with > 1:
            s += f"; batched with {self.batched_with - 1} other request(s)"
        if self.path:
            s += f"; path: {self.path}"
        return s


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] NCHW tensor -> RGB PIL images."""
    return [Image.fromarray(a) for a in to_uint8(images)]


def _captions(spec: ModelSpec, seeds: Sequence[int], labels: torch.Tensor | None) -> list[str]:
    names = class_names(spec)
    out = []
    for i, s in enumerate(seeds):
        c = f"seed {s}"
        if labels is not None:
            k = int(labels[i])
            c += f", class {k}" + (f" ({names[k]})" if names and names[k] != str(k) else "")
        out.append(c)
    return out


def _loaded(name: str) -> tuple[ModelSpec, Denoiser, float]:
    t0 = time.perf_counter()
    already = name in cache()
    spec, den = cache().get(name)
    return spec, den, 0.0 if already else time.perf_counter() - t0


def _sampler() -> Callable[..., torch.Tensor]:
    """:func:`cm_core.sampling.generate.sample_batch`, looked up on its module at call time (where
    tests replace it, e.g. with a function that raises an out-of-memory error)."""
    return _generate.sample_batch


#: what a preview callback gets after each step: (step index, steps, the denoised estimates x0
#: of the step as images, in the order of the request's seeds)
Preview = Callable[[int, int, list[Image.Image]], None]


def generate(req: GenerateRequest, progress: Progress | None = None,
             preview: Preview | None = None) -> GenerateResult:
    """Sample one request (one-step, multistep or Heun for EDM teachers). ``preview`` gets each
    step's denoised estimates as images (the sampler then runs step by step, not as one graph)."""
    return generate_many([req], progress, preview)[0]


def _step_callback(progress: Progress | None, label: str, preview: Preview | None) -> Callable[[dict], None] | None:
    """The sampler callback: progress (a bar only: graphed loops may run), and with ``preview``
    each step's x0 in [-1, 1] as images."""
    bar = _progress_callback(progress, label)
    if preview is None:
        return bar

    def cb(d: dict) -> None:
        if bar is not None:
            bar(d)
        if d.get("denoised") is not None:
            preview(d["i"], d["n"], to_pil(d["denoised"].clamp(-1, 1)))
    return cb


def generate_many(reqs: Sequence[GenerateRequest], progress: Progress | None = None,
                  preview: Preview | None = None) -> list[GenerateResult]:
    """Sample several requests, running those with the same model and settings as one batch.

    Used for Gradio's ``batch=True``: concurrent requests become one forward pass per group.
    Every request is validated first, so a bad one fails before any work is done. ``preview``:
    see :func:`generate` (the images of every group in turn).
    """
    plans = [plan(r) for r in reqs]
    groups: OrderedDict[tuple, list[int]] = OrderedDict()
    for i, p in enumerate(plans):
        groups.setdefault((p.spec.name, p.settings), []).append(i)
    results: list[GenerateResult | None] = [None] * len(reqs)
    for (name, settings), idx in groups.items():
        spec, _, load_s = _loaded(name)
        seeds = [s for i in idx for s in plans[i].seeds]
        labels = [labels_for(spec, plans[i].seeds, plans[i].class_label) for i in idx]
        lab = torch.cat(labels) if spec.class_cond else None  # type: ignore[arg-type]
        cb = _step_callback(progress, "Heun step" if spec.kind == "edm" else "step", preview)

        def run(spec: ModelSpec, den: Denoiser) -> torch.Tensor:
            t = time.perf_counter()
            out = _sampler()(den, spec, seeds, settings, lab, cb)
            if out.is_cuda:  # this stream only: a device-wide sync would break another thread's capture
                torch.cuda.current_stream(out.device).synchronize()
            return out, time.perf_counter() - t, describe_path(den, len(seeds))
        images, secs, path = cache().run(name, run)
        pil = to_pil(images)
        k = 0
        for i in idx:
            m = len(plans[i].seeds)
            results[i] = GenerateResult(pil[k:k + m], _captions(spec, plans[i].seeds, lab[k:k + m] if lab is not None else None),
                                        secs, load_s, plans[i].evaluations, plans[i].description,
                                        batched_with=len(idx), extra={"seeds": list(plans[i].seeds)},
                                        path=path)
            k += m
    return results  # type: ignore[return-value]


def compare_with_teacher(req: GenerateRequest, progress: Progress | None = None) -> GenerateResult:
    """The same seeds and classes on the EDM teacher of ``req.model``, with its Heun sampler."""
    teacher = teacher_for(str(req.model))
    treq = GenerateRequest(model=teacher, seed=req.seed, batch_size=req.batch_size,
                           dropout=0.0, class_label=req.class_label, heun_steps=req.heun_steps)
    return generate(treq, progress)


def warm_up(name: str | None = None) -> float:
    """Load ``name`` (the default model) and run one tiny sample; returns the seconds it took."""
    t0 = time.perf_counter()
    generate(GenerateRequest(model=name or default_model(), batch_size=1))
    return time.perf_counter() - t0
