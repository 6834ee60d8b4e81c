"""Zero-shot editing (paper Section 6, Algorithm 4): the transforms ``A`` and what each editor keeps
(:mod:`.transforms`), the tensor-level editors (:mod:`.editors`), pictures and masks
(:mod:`.pictures`), and one request type per editor with the runner of them all
(:mod:`.picture_editors`)."""
from __future__ import annotations

from ..sampling.loop import Replacement, sigma_loop
from ..sampling.runner import edit_loop
from .editors import colorize, denoise, inpaint, interpolate, slerp, stroke_guided, super_resolve
from .picture_editors import (
                              Colorize,
                              Denoise,
                              EditResult,
                              Inpaint,
                              PictureEdit,
                              ScheduledEdit,
                              StrokeGuided,
                              SuperResolve,
                              interpolate_images,
                              run_edit,
)
from .pictures import ImageEditError
from .transforms import LUMINANCE, luminance_basis, patch_basis, patch_means

__all__ = ["edit_loop", "sigma_loop", "colorize", "inpaint", "super_resolve", "interpolate", "slerp",
           "denoise", "stroke_guided", "luminance_basis", "patch_basis", "patch_means", "PictureEdit",
           "ScheduledEdit", "Colorize", "Inpaint", "SuperResolve", "Denoise", "StrokeGuided", "EditResult",
           "run_edit", "interpolate_images", "LUMINANCE", "Replacement", "ImageEditError"]
