"""Example inputs for the editing tabs, rendered from the built-in held-out digits."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .generation import to_pil


def example_files(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """Example inputs for the editing tabs, rendered once from the built-in held-out digits.

    ``digit`` (32 px colour digit), ``big`` (the same at 128 px), ``grey``, ``lowres`` (8 px),
    ``noisy``, ``strokes`` (a flat-colour blocky painting), ``mask`` (an RGBA layer with the
    right half painted, as the image editor sends it) and ``masked`` (the digit with that layer
    painted on: the editor's composite, which it shows). Written to ``folder`` (default: a
    ``cm-studio-examples`` folder in the temp dir)."""
    import tempfile
    from pathlib import Path

    from ..train.data import load_digits32
    out = Path(folder or Path(tempfile.gettempdir()) / "cm-studio-examples")
    names = ("digit", "big", "grey", "lowres", "noisy", "strokes", "mask", "masked")
    files = {n: str(out / f"{n}.png") for n in names}
    if all(Path(f).is_file() for f in files.values()):
        return files
    out.mkdir(parents=True, exist_ok=True)
    ds = load_digits32("heldout")
    x = ds.images[3:4] if hasattr(ds, "images") else ds[3][0][None]
    digit = to_pil(x)[0]
    digit.save(files["digit"])
    digit.resize((128, 128), Image.Resampling.BICUBIC).save(files["big"])
    digit.convert("L").convert("RGB").save(files["grey"])
    digit.resize((8, 8), Image.Resampling.BOX).save(files["lowres"])
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(digit, np.float32) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(files["noisy"])
    digit.resize((6, 6), Image.Resampling.BOX).quantize(3).convert("RGB").resize(
        (32, 32), Image.Resampling.NEAREST).save(files["strokes"])
    mask = np.zeros((32, 32, 4), np.uint8)
    mask[:, 16:] = (255, 0, 255, 255)
    layer = Image.fromarray(mask, "RGBA")
    layer.save(files["mask"])
    Image.alpha_composite(digit.convert("RGBA"), layer).save(files["masked"])
    return files
