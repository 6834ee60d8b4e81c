"""Gradio ImageEditor values -> the picture and the mask the library takes.

An ImageEditor sends ``{"background": image, "layers": [image, ...], "composite": image}``: the
upload, one transparent layer per brush layer, and both flattened. An API client may send a plain
image instead. The library (:mod:`cm_core.service`) takes a picture and a mask only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cm_core.editing.pictures import ImageEditError, mask_array


def background(value: Any, what: str) -> Any:
    """The uploaded picture of an editor value (its background, else its composite)."""
    if isinstance(value, dict):
        img = value.get("background")
        img = value.get("composite") if img is None else img
        if img is None:
            raise ImageEditError(f"no image: upload {what} first (the editor is empty)")
        return img
    return value


def painting(value: Any, what: str) -> Any:
    """The picture with its strokes: the composite, else the background."""
    if isinstance(value, dict) and value.get("composite") is not None:
        return value["composite"]
    return background(value, what)


def painted_mask(value: Any) -> np.ndarray | None:
    """Where the brush painted (bool [H, W], True = edit): the union of the layers' opaque
    pixels; None for a plain image (no layers to read)."""
    if not isinstance(value, dict):
        return None
    layers = [mask_array(layer) for layer in (value.get("layers") or []) if layer is not None]
    if not layers:
        raise ImageEditError("the editor has no painted layer: paint over the region to edit")
    if any(m.shape != layers[0].shape for m in layers):
        raise ImageEditError("the editor's layers have different sizes")
    return np.logical_or.reduce(layers)
