"""ZeroGPU, Spaces' shared GPU hardware: detection, what changes there, and GPU-time estimates.

On ZeroGPU (``$SPACES_ZERO_GPU`` set by the platform and the ``spaces`` package importable) a GPU
is attached only while a function decorated with ``spaces.GPU`` runs, in a forked worker;
outside it CUDA is emulated, and the Hub docs ask for models to be moved to ``cuda`` in the main
process (at start-up), not inside the decorated function. ``torch.compile`` is not supported
there, so :func:`fast_options` turns compilation and CUDA graphs off (fp16 and channels_last
stay). Elsewhere nothing here has any effect and ``spaces`` is never imported.

``spaces.GPU(duration=...)`` is the longest a call may hold the GPU; shorter requests queue
sooner, and a visitor's quota must cover it. :func:`estimate_seconds` derives it from the work
a request asks for: images x network evaluations per image x the per-evaluation cost at the
model's resolution, plus start-up overhead, within ``[10, $CM_GPU_MAX_DURATION]`` (default 120 s).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from ..models.registry import get_spec

OVERHEAD_S = 6.0  # attaching the GPU, moving the weights, CUDA context
# seconds per image per network evaluation, about 3x the fp32 H100 throughput of the anchors
# (ImageNet 64: 428 img/s at batch 256; LSUN 256: 60 img/s at batch 32)
PER_EVAL_S = {64: 0.008, 256: 0.05}


def zero_gpu_active() -> bool:
    """Whether this process runs on ZeroGPU hardware (``$SPACES_ZERO_GPU`` and ``spaces`` importable)."""
    if os.environ.get("SPACES_ZERO_GPU", "").strip().lower() not in ("1", "t", "true"):
        return False
    try:
        import spaces
    except ImportError:
        return False
    config = getattr(getattr(spaces, "config", None), "Config", None)
    return bool(getattr(config, "zero_gpu", True))


def fast_options() -> dict[str, Any]:
    """Extra :func:`cm_core.accel.entry.optimize` options here: no compilation and no CUDA graphs on ZeroGPU."""
    return {"compile": False, "cuda_graphs": False} if zero_gpu_active() else {}


def max_duration() -> int:
    return max(10, int(os.environ.get("CM_GPU_MAX_DURATION", "120")))


def _per_eval(resolution: int) -> float:
    for res in sorted(PER_EVAL_S):
        if resolution <= res:
            return PER_EVAL_S[res]
    return PER_EVAL_S[max(PER_EVAL_S)] * (resolution / max(PER_EVAL_S)) ** 2


def _evals(model: str, a: dict[str, Any]) -> int:
    """Network evaluations per image of one request (its arguments ``a`` by parameter name)."""
    spec = get_spec(model)
    if spec.kind == "edm":
        return 2 * int(a.get("heun_steps") or spec.heun_steps) - 1
    ts = str(a.get("ts") or "").split("/")[0]
    given = [t for t in ts.split(",") if t.strip()]
    return max(1, len(given) - 1 if given else int(a.get("steps") or 1))


def estimate_seconds(arguments: dict[str, Any], runs: Callable[[str], str] | None = None) -> int:
    """GPU seconds to request for one handler call with ``arguments`` (by parameter name; a
    batched handler's values are lists, one entry per queued request). ``runs`` maps the chosen
    model to the one that actually runs (the EDM teacher for the comparison)."""
    try:
        batched = isinstance(arguments.get("model"), list)
        rows = ([dict(zip(arguments, vals)) for vals in zip(*arguments.values())] if batched
                else [arguments])
        work = 0.0
        for a in rows:
            model = runs(str(a["model"])) if runs else str(a["model"])
            images = int(a.get("batch_size") or a.get("frames") or 1)
            work += images * _evals(model, a) * _per_eval(get_spec(model).resolution)
        return int(min(max_duration(), max(10, math.ceil(OVERHEAD_S + work))))
    except (KeyError, TypeError, ValueError):
        return 60  # spaces.GPU's default; the handler reports the bad input itself
