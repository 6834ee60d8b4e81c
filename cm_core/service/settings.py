"""Limits and environment settings of the app-facing layer.

``CM_DEFAULT_MODEL``, ``CM_MAX_BATCH`` (largest batch per request, default 16), ``CM_CONCURRENCY``,
``CM_QUEUE_SIZE``, ``CM_WAITERS``, ``CM_BATCH_REQUESTS``, ``CM_CACHE_EXAMPLES`` and ``CM_TORCH_THREADS``.
"""
from __future__ import annotations

import os

import torch

from ..models.registry import DEFAULT_MODEL, REGISTRY, get_spec

MAX_SEED = 2 ** 63 - 1
MAX_HEUN_STEPS = 200
MAX_TS_STEPS = 200  # network evaluations per image with explicit ts (the largest released grid has 201 points)

MAX_STEPS = max(s.grid_size for s in REGISTRY.values()) - 1  # the largest grid's step count


def default_model() -> str:
    """``$CM_DEFAULT_MODEL`` or the registry default (the embedded digits model)."""
    name = os.environ.get("CM_DEFAULT_MODEL", "").strip() or DEFAULT_MODEL
    get_spec(name)  # unknown name: a clear error at start-up
    return name


def max_batch() -> int:
    return max(1, int(os.environ.get("CM_MAX_BATCH", "16")))


def _env_int(name: str, default: int, lo: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        v = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    return max(lo, v)


def concurrency() -> int:
    """Model-running events at a time (one shared group): ``$CM_CONCURRENCY``, default 1."""
    return _env_int("CM_CONCURRENCY", 1)


def waiters() -> int:
    """Model-running requests let past the queue besides the running ones: ``$CM_WAITERS``, default 8.

    They wait for a model download or for a compute slot (:mod:`.slots`), showing which; a download
    that takes minutes then holds none of the slots that serve models already on disk."""
    return _env_int("CM_WAITERS", 8, lo=0)


def queue_size() -> int:
    """Largest number of waiting requests: ``$CM_QUEUE_SIZE``, default 64."""
    return _env_int("CM_QUEUE_SIZE", 64)


def max_batched_requests() -> int:
    """Concurrent generate requests merged into one batch: ``$CM_BATCH_REQUESTS``, default 8."""
    return _env_int("CM_BATCH_REQUESTS", 8)


def cache_examples() -> bool:
    """Cache the examples' outputs (lazily, on first use): ``$CM_CACHE_EXAMPLES``, default on."""
    return os.environ.get("CM_CACHE_EXAMPLES", "1").lower() not in ("0", "false", "no")


def configure_torch_threads() -> int:
    """Intra-op threads on CPU: ``$CM_TORCH_THREADS``, else half the cores (at most 8).

    Small models gain little from many threads, and on a shared machine a thread per core makes
    every thread wait for the slowest (measured: 2 threads on a busy 2-core VM run the 32 px
    model 2x to 50x slower than 1)."""
    n = _env_int("CM_TORCH_THREADS", max(1, min(8, (os.cpu_count() or 2) // 2)))
    torch.set_num_threads(n)
    return n
