"""The process-wide settings of the fast path, in one place.

Everything else in :mod:`cm_core.accel` changes only the objects it builds. :func:`setup_process`
is the one function that changes state shared by the whole process, and it returns what it set,
by name, so that a caller (and the log) can see it:

- ``cudnn.benchmark`` (CUDA): cuDNN times its convolution algorithms for each new shape and keeps
  the fastest. Batch buckets keep the shapes few.
- ``malloc`` (CPU, Linux with glibc): :func:`~cm_core.accel.cpu_malloc.tune_allocator`'s mmap
  and trim thresholds, heap padding and one arena. ``CM_CPU_MALLOC=0`` leaves glibc's defaults.
- ``inductor cache`` (compilation on): ``$TORCHINDUCTOR_CACHE_DIR`` (kept if already set) and
  Inductor's FX-graph and autotune caches, so a restart reloads compiled kernels
  (:func:`~cm_core.accel.compile_cache.configure_compile_cache`).
- ``dynamo recompile limit`` (compilation on): at least two Dynamo cache entries per batch bucket
  (with and without labels) plus a margin, so no bucket falls back to eager for lack of room.

:func:`cm_core.accel.entry.optimize` calls it for the device and options it is given; calling it
again changes nothing that is already set.
"""
from __future__ import annotations

import logging
import os

import torch

from .compile_cache import configure_compile_cache
from .cpu_malloc import tune_allocator

__all__ = ["setup_process"]

log = logging.getLogger("cm_core.accel.fast")


def _raise_recompile_limit(n: int) -> int:
    """Dynamo's per-function cache size to at least ``n``; returns the limit now in force."""
    import torch._dynamo.config as dc
    now = 0
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name):
            setattr(dc, name, max(getattr(dc, name), n))
            now = max(now, getattr(dc, name))
    return now


def setup_process(device: torch.device, compile: bool = False, buckets: int = 1,
                  cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Apply the process-wide settings that serving on ``device`` needs (see the module doc);
    ``compile``: compilation is on, for ``buckets`` batch buckets, with Inductor's cache under
    ``cache_dir`` unless ``$TORCHINDUCTOR_CACHE_DIR`` is set. Returns {setting: value} of what
    is in force, e.g. ``{"cudnn.benchmark": "True"}``."""
    done: dict[str, str] = {}
    if device.type == "cuda" and not torch.backends.cudnn.benchmark:
        torch.backends.cudnn.benchmark = True
        done["cudnn.benchmark"] = "True"
    if device.type == "cpu" and tune_allocator():
        done["malloc"] = "glibc mallopt: mmap and trim thresholds 1 GiB, top pad 64 MiB, 1 arena"
    if compile:
        done["inductor cache"] = str(configure_compile_cache(cache_dir))
        done["dynamo recompile limit"] = str(_raise_recompile_limit(2 * buckets + 4))
    if done:
        log.info("process settings: %s", "; ".join(f"{k} = {v}" for k, v in done.items()))
    return done

