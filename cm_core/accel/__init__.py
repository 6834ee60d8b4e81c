"""The fast path beside the models: dtype and layout choice, compiled batch buckets with a persistent
cache and background compilation, whole-loop CUDA graphs (:mod:`.fast`, :mod:`.compile_cache`,
:mod:`.cuda_graphs`), and scale-out over ``torchrun`` ranks (:mod:`.distributed`)."""
from __future__ import annotations

from .fast import FastDenoiser
from .entry import optimize

__all__ = ["FastDenoiser", "optimize"]
