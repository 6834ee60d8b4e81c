"""cm_core: OpenAI's consistency models (Song et al. 2023), loaded exactly and sampled fast.

The public API: :func:`load_denoiser`, :func:`optimize` (the fast path), :mod:`cm_core.sampling`
(onestep, multistep, heun), :mod:`cm_core.editing` (colorize, inpaint, super_resolve, interpolate)
and the registry. Layout and import rules: ``docs/ARCHITECTURE.md``.
"""
from __future__ import annotations

from . import editing, sampling
from .accel.entry import optimize
from .models.checkpoints import CheckpointError, load_denoiser, pick_device
from .models.denoiser import Denoiser
from .models.registry import DEFAULT_MODEL, REGISTRY, ArchSpec, ModelSpec, UnknownModelError, get_spec

__all__ = ["editing", "sampling", "load_denoiser", "optimize", "pick_device", "CheckpointError", "Denoiser",
           "REGISTRY", "DEFAULT_MODEL", "ArchSpec", "ModelSpec", "UnknownModelError", "get_spec"]
__version__ = "0.1.0"
