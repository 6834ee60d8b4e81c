"""Zero-shot editing (paper Section 6, Algorithm 4): the transforms ``A`` and what each editor keeps
(:mod:`.transforms`), the tensor-level editors (:mod:`.editors`), and the same editors over PIL
pictures with image and mask preparation (:mod:`.pictures`, :mod:`.picture_editors`)."""
from __future__ import annotations

from ..sampling.loop import Replacement, sigma_loop
from ..sampling.runner import edit_loop
from .editors import colorize, denoise, inpaint, interpolate, slerp, stroke_guided, super_resolve
from .picture_editors import (
                              colorize_image,
                              denoise_image,
                              inpaint_image,
                              interpolate_images,
                              stroke_image,
                              super_resolve_image,
)
from .pictures import ImageEditError
from .transforms import LUMINANCE, luminance_basis, patch_basis, patch_means

__all__ = ["edit_loop", "sigma_loop", "colorize", "inpaint", "super_resolve", "interpolate", "slerp",
           "denoise", "stroke_guided", "luminance_basis", "patch_basis", "patch_means", "colorize_image",
           "inpaint_image", "super_resolve_image", "interpolate_images", "denoise_image", "stroke_image",
           "LUMINANCE", "Replacement", "ImageEditError"]
