"""Model sizes: the file on disk, the registry's figure, or an estimate from the architecture."""
from __future__ import annotations

from ..models.checkpoints import local_path
from ..models.registry import IMAGENET64, LSUN256, ModelSpec

# Parameter counts of the released architectures (float32 files are ~4 bytes per parameter).


_PARAMS = {IMAGENET64: 295_899_267, LSUN256: 526_304_771}


def model_bytes(spec: ModelSpec, on_disk_only: bool = True) -> int | None:
    """Size of the model's file when on disk, else the registry's size or an estimate."""
    path = local_path(spec)
    if path.is_file():
        return path.stat().st_size
    if on_disk_only:
        return None
    if spec.size_bytes:
        return spec.size_bytes
    params = _PARAMS.get(spec.arch)
    return params * 4 if params else None


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}" if unit == "GB" else f"{n / div:.1f} {unit}"
    return f"{n} B"
