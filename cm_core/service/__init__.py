"""The app-facing layer: a bounded model cache, the model table, and request functions.

Everything the Gradio app (``app.py``) computes goes through here, so the UI stays a thin shell
and every behaviour is testable without a browser. Request functions validate their parameters
and raise ``ValueError`` (or :class:`~cm_core.models.checkpoints.CheckpointError` /
:class:`~cm_core.models.registry.UnknownModelError`, both of which the app also shows as messages) with
a sentence a user can act on; they return PIL images and timings.

Environment: ``CM_MODEL_CACHE_SIZE`` (models kept loaded, default 2), ``CM_DEVICE`` (default CUDA >
MPS > CPU), ``CM_DTYPE`` (``float32`` default; ``float16``/``bfloat16`` on GPUs), ``CM_MAX_BATCH``
(largest batch per request, default 16), plus those of :mod:`cm_core.models.checkpoints`.

Modules, one job each: :mod:`.settings` (limits, environment), :mod:`.model_cache` (the LRU of
loaded models, out-of-memory handling), :mod:`.sizes` and :mod:`.models` (the model table, fetching), :mod:`.fetches` (downloads beside the requests),
:mod:`.classes` and :mod:`.params` (validation, :func:`plan`), :mod:`.zerogpu` (ZeroGPU), :mod:`.slots` (compute slots), :mod:`.generation`, :mod:`.edits`
and :mod:`.interpolation` (request functions), :mod:`.examples` (example inputs). The public names
are re-exported here. Tests replace the process-wide cache in :mod:`.model_cache` (``_CACHE``) and
the sampler in :mod:`cm_core.sampling.generate` (``sample_batch``), the modules that own them.
"""
from __future__ import annotations

from ..editing.picture_editors import EditResult
from .classes import RANDOM_CLASS, class_choices, class_names, parse_class
from .edits import colorize, denoise, inpaint, stroke_guided, super_resolve
from .examples import example_files
from .generation import (
                         GenerateResult,
                         compare_with_teacher,
                         generate,
                         generate_many,
                         to_pil,
                         warm_up,
)
from .interpolation import InterpolationResult, interpolate
from .model_cache import ModelCache, cache
from .models import (
                         TABLE_HEADERS,
                         check_download,
                         ensure_model,
                         fetch_command,
                         fetch_model,
                         model_choices,
                         model_info,
                         model_markdown,
                         model_rows,
                         model_state,
                         runnable,
                         sampling_summary,
                         start_download,
                         teacher_for,
)
from .params import USER_ERRORS, GenerateRequest, Plan, parse_ts, plan
from .progress import Cancelled, Progress
from .settings import (
                         MAX_HEUN_STEPS,
                         MAX_SEED,
                         MAX_STEPS,
                         MAX_TS_STEPS,
                         cache_examples,
                         concurrency,
                         configure_torch_threads,
                         default_model,
                         max_batch,
                         max_batched_requests,
                         queue_size,
                         waiters,
)
from .slots import ComputeSlots, compute_slots
from .sizes import human_size, model_bytes
from .zerogpu import estimate_seconds, zero_gpu_active

__all__ = [
    "USER_ERRORS", "Progress", "Cancelled", "ComputeSlots", "compute_slots", "waiters", "MAX_SEED", "MAX_HEUN_STEPS", "MAX_TS_STEPS", "MAX_STEPS", "RANDOM_CLASS",
    "TABLE_HEADERS", "ModelCache", "cache", "warm_up", "default_model", "max_batch", "concurrency",
    "queue_size", "max_batched_requests", "cache_examples", "configure_torch_threads", "model_bytes",
    "human_size", "fetch_command", "sampling_summary", "model_rows", "model_info", "model_markdown",
    "model_choices", "model_state", "runnable",
    "fetch_model", "teacher_for", "class_names", "class_choices", "parse_class", "parse_ts",
    "GenerateRequest", "Plan", "plan", "GenerateResult", "to_pil", "generate", "generate_many",
    "compare_with_teacher", "example_files", "EditResult", "colorize",
    "inpaint", "super_resolve", "denoise", "stroke_guided", "InterpolationResult", "interpolate",
    "class_names", "ensure_model", "start_download", "check_download", "estimate_seconds", "zero_gpu_active",
]
