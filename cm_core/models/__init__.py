"""Models: the registry of released checkpoints (data), checkpoint loading and conversion, downloads,
the UNet network and the :class:`Denoiser`, which owns all the sigma math (c_skip, c_out, c_in)."""
from __future__ import annotations

from .checkpoints import CheckpointError, is_available, load_denoiser, pick_device
from .denoiser import Denoiser
from .network import MCDropout
from .registry import DEFAULT_MODEL, REGISTRY, ArchSpec, ModelSpec, UnknownModelError, get_spec

__all__ = ["CheckpointError", "is_available", "load_denoiser", "pick_device", "Denoiser", "MCDropout", "DEFAULT_MODEL",
           "REGISTRY", "ArchSpec", "ModelSpec", "UnknownModelError", "get_spec"]
