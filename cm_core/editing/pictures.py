"""User images <-> model tensors: reading uploads, fitting them to the model, masks, validation.

Policies (one place, documented once):

* **Reading**: a PIL image, bytes, a path, a file object or a uint8/float array. Animated images
  (GIF, APNG, WebP) use their first frame; EXIF orientation is applied. Pillow's decompression-bomb
  limit (``Image.MAX_IMAGE_PIXELS``) is enforced as an error, not a warning.
* **Colour**: every mode becomes RGB. 16-bit and 32-bit greyscale (``I;16``, ``I``) are scaled to
  8 bits (not clipped), float (``F``) is read as [0, 1] when its maximum is <= 1 else [0, 255];
  CMYK, YCbCr, LAB, HSV, palette and 1-bit images use Pillow's conversion.
* **Alpha**: transparent pixels are composited on WHITE (``BACKGROUND``), as a transparent PNG is
  shown on a page; pass ``background`` to change it (e.g. (128, 128, 128) for mid-grey).
* **Fit**: centre-crop to the largest centred square, then resize to the model's resolution
  (Lanczos). Nothing is padded, so no artificial border reaches the model; the edges of
  non-square images are cut. A mask of the upload's size is fitted the same way.
* **Tensors**: [B, 3, R, R] float32 in [-1, 1], ``x / 127.5 - 1``; back with the original's
  ``(x + 1) * 127.5`` rounded and clipped to uint8.
* **Masks**: in user space a mask marks where to EDIT (any non-zero value, or any non-transparent
  pixel of an image with alpha, e.g. a Gradio ImageEditor layer). The tensor-level editors use the
  opposite convention (1 = keep): :func:`keep_mask` converts.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

BACKGROUND = (255, 255, 255)
ImageSource = Any  # PIL.Image | bytes | str | os.PathLike | file object | np.ndarray


class ImageEditError(ValueError):
    """A user input the editors cannot use; the message says how to fix it."""


# ----------------------------------------------------------------------------- reading
def _open(src: ImageSource) -> Image.Image:
    """Open ``src`` lazily; raise :class:`ImageEditError` for anything that is not an image."""
    if isinstance(src, Image.Image):
        _check_pixels(src)  # e.g. decoded by a web framework, which only warns about bombs
        return src
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    elif not isinstance(src, (str, os.PathLike)) and not hasattr(src, "read"):
        raise ImageEditError(f"expected an image (PIL image, file, bytes or array), got "
                             f"{type(src).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(src)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageEditError(f"the image is too large to process safely ({e}); "
                             "downscale it below 89 megapixels") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageEditError(f"could not read the upload as an image ({e}); upload a PNG, JPEG, "
                             "WebP, GIF or BMP file") from None


def _check_pixels(img: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise ImageEditError(f"the image is too large to process safely ({img.width}x{img.height} = "
                             f"{img.width * img.height} pixels, limit {limit}); downscale it below "
                             f"{limit / 1e6:.0f} megapixels")


def check_upload(src: ImageSource) -> tuple[int, int]:
    """(W, H) of an upload from its header alone, before anything decodes it: an
    :class:`ImageEditError` for a file that is not an image or exceeds Pillow's pixel limit."""
    img = _open(src)
    try:
        return img.size
    finally:
        if img is not src:
            img.close()


def _from_array(a: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 array (uint8 0-255, bool, or float in [0, 1]) -> PIL image."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise ImageEditError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageEditError("the image array contains NaN or infinite values")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def load_image(src: ImageSource) -> Image.Image:
    """A loaded, first-frame, EXIF-oriented PIL image of any mode (see module doc)."""
    img = _open(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageEditError(f"the image is too large to process safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageEditError(f"the image file is damaged or truncated ({e}); "
                             "re-save it as PNG or JPEG") from None
    if img.width < 1 or img.height < 1:
        raise ImageEditError(f"the image is empty ({img.width}x{img.height} pixels)")
    return img


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit 'L', rescaled rather than clipped."""
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
    elif img.mode.startswith("I;16") or np.nanmax(a, initial=0.0) > 255:
        a = a / 257.0
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image, background: Sequence[int] = BACKGROUND) -> Image.Image:
    """Any PIL mode -> 'RGB'; transparency is composited on ``background`` (white by default)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _high_depth_to_l(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(int(c) for c in background[:3]) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


# ----------------------------------------------------------------------------- fitting
def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) that :func:`fit_image` keeps."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def fit_image(img: Image.Image, size: int, resample: int = Image.Resampling.LANCZOS) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` x ``size`` (see module doc)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    sq = img.crop(crop_box(*img.size))
    return sq if sq.size == (size, size) else sq.resize((size, size), resample)


def prepare_image(src: ImageSource, size: int, background: Sequence[int] = BACKGROUND
                  ) -> Image.Image:
    """Read, convert to RGB (alpha on ``background``) and fit to ``size`` x ``size``."""
    return fit_image(to_rgb(load_image(src), background), size)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W] float32 in [-1, 1] (``x / 127.5 - 1``)."""
    a = np.asarray(to_rgb(img), dtype=np.float32)
    return torch.from_numpy(a / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] (or [3, H, W]) in [-1, 1] -> RGB PIL images (``(x + 1) * 127.5``, rounded)."""
    x = x[None] if x.ndim == 3 else x
    a = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(im.permute(1, 2, 0).numpy(), "RGB") for im in a]


def estimate_noise_std(image: Image.Image) -> float:
    """Noise std in grey levels (0-255) of an RGB image: the median absolute value of the finest
    diagonal Haar band over 0.6745 (Donoho's estimator); textures make it an upper bound."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    a = a[:h, :w]
    hh = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / 0.6745)


# ----------------------------------------------------------------------------- masks
def _alpha_or_any(a: np.ndarray, alpha: bool) -> np.ndarray:
    """Edit where the alpha channel is non-zero (images with alpha) or any channel is non-zero."""
    if a.ndim == 2:
        return a != 0
    return a[..., -1] != 0 if alpha else (a != 0).any(axis=-1)


def mask_array(src: Any) -> np.ndarray:
    """A user mask as a bool [H, W] array, True = EDIT there.

    ``src``: a PIL image (alpha channel if it has one, else any non-zero channel), a numpy array
    or tensor [H, W] / [H, W, C] (C = 4: its alpha; otherwise any non-zero channel), or a path
    or bytes of an image file.
    """
    if isinstance(src, torch.Tensor):
        src = src.detach().cpu().numpy()
    if isinstance(src, np.ndarray):
        a = src[..., 0] if src.ndim == 3 and src.shape[2] == 1 else src
        if a.ndim not in (2, 3) or a.size == 0:
            raise ImageEditError(f"a mask array must be HxW or HxWxC, got shape {src.shape}")
        return _alpha_or_any(np.nan_to_num(a), a.ndim == 3 and a.shape[2] == 4)
    img = load_image(src)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return np.asarray(img.convert("RGBA"))[..., 3] != 0
    if img.mode in ("RGB", "L", "1", "I", "F") or img.mode.startswith("I;16"):
        return _alpha_or_any(np.asarray(img), False)
    return _alpha_or_any(np.asarray(img.convert("RGB")), False)


def fit_mask(edit: np.ndarray, image_size: tuple[int, int], size: int) -> np.ndarray:
    """Fit a bool edit mask to the model: a mask of the upload's size (``image_size`` = (W, H)) gets
    the same centre crop and is resized so that a model pixel is edited if any pixel under it is;
    a ``size`` x ``size`` mask is used as is. Any other size is an error."""
    h, w = edit.shape
    if (w, h) == tuple(image_size):
        crop = Image.fromarray(edit.astype(np.uint8) * 255, "L").crop(crop_box(w, h))
        if crop.size != (size, size):
            crop = crop.resize((size, size), Image.Resampling.BOX)
        return np.asarray(crop) > 0
    if (w, h) == (size, size):
        return edit
    raise ImageEditError(f"the mask is {w}x{h} but the image is {image_size[0]}x{image_size[1]} "
                         f"(model size {size}x{size}): draw the mask on the uploaded image, or give "
                         "a mask of the image's size or of the model's size")


def check_edit_mask(edit: np.ndarray) -> np.ndarray:
    """Reject masks that edit nothing or everything (after fitting); returns ``edit``."""
    if not edit.any():
        raise ImageEditError("the mask is empty (after the centre crop to the model's square): "
                             "paint over the region to regenerate")
    if edit.all():
        raise ImageEditError("the mask covers the whole image, so nothing of the image is kept: "
                             "leave some pixels unpainted, or use generation instead")
    return edit


def keep_mask(edit: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """User edit mask (True = edit) -> the editors' [1, 1, H, W] float mask (1 = keep)."""
    return torch.from_numpy((~edit).astype(np.float32))[None, None].to(device)


def prepare_mask(src: Any, image_size: tuple[int, int], size: int) -> np.ndarray:
    """:func:`mask_array`, :func:`fit_mask` and :func:`check_edit_mask` in one call."""
    return check_edit_mask(fit_mask(mask_array(src), image_size, size))
