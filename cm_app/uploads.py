"""Upload components that refuse bad files from the header, and an atomic Gradio image cache."""
from __future__ import annotations

import os

import gradio as gr

from cm_core.models.messages import QUOTE_CHARS, bound


def _atomic_save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's ``save_pil_to_cache`` with an atomic write. Its files are named by content hash and
    rewritten in place, so two requests with an identical output image (the same upload shown as
    "input", a shared example) let one download the file while the other has truncated it: the
    client gets 0 bytes ("peer closed connection"; 1 in 50 in the load test). A temporary file
    then ``os.replace`` means readers see the old or the new (equal) bytes, never a partial file."""
    import tempfile
    from pathlib import Path

    from gradio import processing_utils as pu
    data = pu.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / pu.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return str(target)


def install_atomic_image_cache() -> None:
    """Make Gradio write its cached output images atomically (see :func:`_atomic_save_pil_to_cache`)."""
    from gradio import processing_utils as pu
    if hasattr(pu, "encode_pil_to_bytes") and hasattr(pu, "hash_bytes"):
        pu.save_pil_to_cache = _atomic_save_pil_to_cache


def _guard_upload(read, path):
    """Refuse an upload that is not an image or exceeds Pillow's pixel limit (a decompression
    bomb) from its header, before Gradio decodes it; damaged files get the same kind of message."""
    from PIL import Image

    from cm_core.editing.pictures import ImageEditError, check_upload

    def clean(e: Exception) -> str:  # the server's temporary path is none of the user's business
        return bound(str(e).replace(str(path), os.path.basename(str(path))[-QUOTE_CHARS:]) if path else str(e))
    try:
        if path:
            check_upload(str(path))
        return read()
    except ImageEditError as e:
        raise gr.Error(clean(e), print_exception=False) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise gr.Error(f"could not read the upload as an image ({clean(e)}); upload a PNG, JPEG, WebP, "
                       "GIF or BMP file", print_exception=False) from None


def UploadImage(**kw) -> gr.Image:  # noqa: N802 - reads like the component it makes
    """A ``gr.Image`` whose uploads pass :func:`_guard_upload` first. (Wrapped on the instance: a
    subclass would make Gradio write an ``app.pyi`` stub next to this file at every start.)"""
    comp = gr.Image(**{"height": 320, "elem_classes": "upload", **kw})
    read = comp.preprocess
    comp.preprocess = lambda payload: _guard_upload(lambda: read(payload), getattr(payload, "path", None))
    return comp


def UploadEditor(**kw) -> gr.ImageEditor:  # noqa: N802
    """A ``gr.ImageEditor`` whose background and layers pass :func:`_guard_upload` first."""
    comp = gr.ImageEditor(**kw)
    read = comp.convert_and_format_image
    comp.convert_and_format_image = lambda file, flatten_on_white=False: _guard_upload(
        lambda: read(file, flatten_on_white), getattr(file, "path", None))
    return comp
