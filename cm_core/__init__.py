"""cm_core: OpenAI's consistency models (Song et al. 2023), loaded exactly and sampled fast."""
from . import editing, images, sampling, schedule
from .checkpoints import CheckpointError, load_denoiser, pick_device
from .denoiser import Denoiser
from .registry import DEFAULT_MODEL, REGISTRY, ArchSpec, ModelSpec, UnknownModelError, get_spec

__all__ = ["editing", "images", "sampling", "schedule", "load_denoiser", "pick_device", "CheckpointError", "Denoiser",
           "REGISTRY", "DEFAULT_MODEL", "ArchSpec", "ModelSpec", "UnknownModelError", "get_spec"]
__version__ = "0.1.0"
