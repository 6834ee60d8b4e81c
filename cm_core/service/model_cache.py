"""A bounded, GPU-memory-aware LRU of loaded models, with CUDA out-of-memory handling.

Environment: ``CM_MODEL_CACHE_SIZE`` (models kept loaded, default 2), ``CM_DEVICE`` (default CUDA >
MPS > CPU), ``CM_DTYPE`` (``float32`` default; ``float16``/``bfloat16`` on GPUs), ``CM_FAST``
(the :mod:`cm_core.accel.fast` path: ``auto`` = on CUDA, where it picks fp16 unless ``CM_DTYPE`` is set,
and on CPUs with native bf16).
"""
from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ..accel.cuda_graphs import empty_cache, is_oom
from ..models.checkpoints import load_denoiser, pick_device
from ..models.denoiser import Denoiser
from ..models.registry import ModelSpec, get_spec
from .sizes import model_bytes
from .zerogpu import fast_options, zero_gpu_active


def _free_cuda_memory(device: torch.device) -> int | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


class ModelCache:
    """A bounded LRU of loaded :class:`Denoiser` s, aware of GPU memory.

    - at most ``capacity`` models (``$CM_MODEL_CACHE_SIZE``, default 2); the least recently used
      is evicted first;
    - before a load on CUDA, models are evicted until the free memory fits the new one (its file
      size, times a margin);
    - a CUDA out-of-memory error during a load or a run evicts every other model, empties the CUDA
      cache and retries once;
    - a load that fails is not cached (the next call tries again, e.g. after a fetch).
    """

    def __init__(self, capacity: int | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None,
                 loader: Callable[..., Denoiser] | None = None,
                 free_memory: Callable[[torch.device], int | None] = _free_cuda_memory) -> None:
        cap = capacity if capacity is not None else int(os.environ.get("CM_MODEL_CACHE_SIZE", "2"))
        if cap < 1:
            raise ValueError(f"CM_MODEL_CACHE_SIZE must be >= 1, got {cap}")
        self.capacity = cap
        zero = zero_gpu_active()  # CUDA is emulated outside spaces.GPU: load there, no memory queries
        self.device = pick_device(device or os.environ.get("CM_DEVICE") or ("cuda" if zero else None))
        self.dtype = dtype or _env_dtype(self.device)
        self._loader = loader or load_denoiser
        self._free_memory = (lambda _d: None) if zero else free_memory
        self._models: OrderedDict[str, Denoiser] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # number of actual loads (for tests and the info line)

    def names(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._models)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def clear(self) -> None:
        self.evict()

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop every model but ``keep``; returns the evicted names."""
        with self._lock:
            gone = [n for n in self._models if n != keep]
            for n in gone:
                _release(self._models.pop(n))
        self._empty_cuda()
        return gone

    def _empty_cuda(self) -> None:
        if self.device.type == "cuda":
            gc.collect()  # a fast model's compiled step and graphs form reference cycles
            empty_cache()  # not during another thread's CUDA graph capture

    def _evict_oldest(self) -> None:
        _release(self._models.popitem(last=False)[1])
        self._empty_cuda()

    def _make_room(self, spec: ModelSpec) -> None:
        while len(self._models) >= self.capacity:
            self._evict_oldest()
        free = self._free_memory(self.device)
        if free is None:
            return
        need = int(1.5 * (model_bytes(spec, on_disk_only=False) or 0)) or 1
        while self._models and free < need:
            self._evict_oldest()
            free = self._free_memory(self.device) or 0

    def get(self, name: str) -> tuple[ModelSpec, Denoiser]:
        """The spec and loaded denoiser of registry model ``name`` (loading it if needed)."""
        spec = get_spec(name)
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return spec, self._models[name]
            self._make_room(spec)
            try:
                den = self._load(spec)
            except Exception as e:  # noqa: BLE001 - OOM is retried once after evicting all
                if not is_oom(e):
                    raise
                self.evict()
                den = self._load(spec)
            self._models[name] = den
            return spec, den

    def _load(self, spec: ModelSpec) -> Denoiser:
        den = self._loader(spec.name, device=self.device, dtype=self.dtype)
        self.loads += 1
        if _use_fast(self.device):
            from ..accel.entry import optimize  # fp16 + channels_last + compile buckets + CUDA graphs
            den = optimize(den, dtype=self.dtype if "CM_DTYPE" in os.environ else "auto",
                           **{**_env_compile(), **fast_options()})  # ZeroGPU wins: no compilation, no graphs
        return den

    def run(self, name: str, fn: Callable[[ModelSpec, Denoiser], Any]) -> Any:
        """``fn(spec, den)``; on CUDA out-of-memory, evict the other models and retry once."""
        spec, den = self.get(name)
        try:
            return fn(spec, den)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            self.evict(keep=name)
            try:
                return fn(spec, den)
            except Exception as e2:  # noqa: BLE001
                if is_oom(e2):
                    self._empty_cuda()  # give the failed attempt's blocks back before the next request
                    raise ValueError(f"out of GPU memory running {name}: use a smaller batch size") from None
                raise


def _release(den: Denoiser) -> None:
    """Let an evicted model's device memory go: a fast model stops compiling and drops its graphs."""
    close = getattr(den, "close", None)
    if callable(close):
        close()


def _use_fast(device: torch.device) -> bool:
    """``$CM_FAST``: ``auto`` (default: the fast path on CUDA and on CPUs: there it runs the
    released nets in bf16 + channels_last where the CPU has native bf16 and exactly elsewhere, the
    embedded nets in fp32 + channels_last, each variant checked against fp32, and tunes the
    allocator; see :func:`cm_core.accel.cpu.cpu_plan`), ``1`` (everywhere, MPS too) or ``0``
    (never: the exact fp32 Denoiser)."""
    mode = os.environ.get("CM_FAST", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"CM_FAST must be auto, 0 or 1, got {mode!r}")
    if mode != "auto":
        return mode == "1"
    return device.type in ("cuda", "cpu")


def _env_compile() -> dict[str, bool]:
    """``$CM_COMPILE``: ``auto`` (default: :func:`cm_core.accel.entry.optimize` decides, i.e. on CUDA
    only), ``1`` (also on CPU: Inductor with freezing, in the background) or ``0``; as options."""
    mode = os.environ.get("CM_COMPILE", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"CM_COMPILE must be auto, 0 or 1, got {mode!r}")
    return {} if mode == "auto" else {"compile": mode == "1"}


def _env_dtype(device: torch.device) -> torch.dtype:
    name = os.environ.get("CM_DTYPE", "float32")
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"CM_DTYPE must be float32, float16 or bfloat16, got {name!r}")
    return dt if device.type != "cpu" else torch.float32


_CACHE_LOCK = threading.Lock()
_CACHE: ModelCache | None = None  # the process-wide model cache, created by cache() on first use


def cache() -> ModelCache:
    """The process-wide model cache (created on first use).

    It lives in this module's ``_CACHE``, so replacing it there
    (``monkeypatch.setattr(model_cache, "_CACHE", ...)``) is what every request function then uses.
    """
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ModelCache()
        return _CACHE
