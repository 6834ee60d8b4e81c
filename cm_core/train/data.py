"""Training data: the built-in offline colour-digits set and a folder of images.

The digits are scikit-learn's ``load_digits`` (1,797 greyscale 8x8 images, values 0..16, shipped
inside the package, so no download), upsampled to 32x32 (bilinear) and rendered in colour: image
``i`` gets a foreground and a background RGB colour drawn from a generator seeded by
``(seed, epoch, i)``, so the set is deterministic and colourization is meaningful. Labels are the
digits (class-conditional). A fixed split holds out a quarter of the digits (``i % 4 == 0``) for
the quality classifier (:class:`cm_core.evaluation.digits.DigitClassifier`), which generative
models never see.

All images are float tensors [N, 3, H, W] in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Split = Literal["train", "heldout", "all"]
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
MIN_CONTRAST = 0.45  # minimum RGB distance between foreground and background colours


def digit_split(n: int, split: Split) -> np.ndarray:
    """Indices of ``split`` among ``n`` digits: held-out is every 4th image, train the rest."""
    idx = np.arange(n)
    if split == "all":
        return idx
    if split == "heldout":
        return idx[idx % 4 == 0]
    if split == "train":
        return idx[idx % 4 != 0]
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def digit_colours(index: int, seed: int = 0, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background) RGB in [0, 1] for image ``index``: uniform colours, redrawn until
    they differ by at least ``MIN_CONTRAST`` in RGB distance so the digit stays visible."""
    rng = np.random.default_rng([seed, epoch, index])
    while True:
        fg, bg = rng.random(3), rng.random(3)
        if np.linalg.norm(fg - bg) >= MIN_CONTRAST:
            return fg, bg


def render_digits(images8: np.ndarray, indices: np.ndarray, size: int = 32, seed: int = 0,
                  epoch: int = 0) -> torch.Tensor:
    """Colour renders [N, 3, size, size] in [-1, 1] of 8x8 digits ``images8`` [N, 8, 8] (0..16).

    ``alpha = bilinear_upsample(img / 16)``; ``rgb = bg * (1 - alpha) + fg * alpha``; colours by
    :func:`digit_colours` of each original dataset ``indices[i]``.
    """
    a = torch.from_numpy(np.asarray(images8, dtype=np.float32) / 16.0)[:, None]
    a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    cols = [digit_colours(int(i), seed, epoch) for i in indices]
    fg = torch.tensor(np.stack([c[0] for c in cols]), dtype=torch.float32)[:, :, None, None]
    bg = torch.tensor(np.stack([c[1] for c in cols]), dtype=torch.float32)[:, :, None, None]
    return (bg * (1 - a) + fg * a) * 2 - 1


@dataclass
class ImageDataset:
    """An in-memory image set: ``images`` [N, 3, H, W] in [-1, 1], ``labels`` [N] or None.

    ``recolor`` (digits only) re-renders with fresh colours for a given epoch.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int | None = None
    name: str = ""
    _digits8: np.ndarray | None = field(default=None, repr=False)
    _indices: np.ndarray | None = field(default=None, repr=False)
    _seed: int = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def recolor(self, epoch: int) -> None:
        """Digits: draw this epoch's colours (deterministic in ``(seed, epoch, index)``)."""
        if self._digits8 is not None and self._indices is not None:
            self.images = render_digits(self._digits8, self._indices, self.image_size, self._seed, epoch)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A random batch (with replacement) ``(x [B,3,H,W], labels [B] or None)`` from ``generator``."""
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return self.images[idx], (self.labels[idx] if self.labels is not None else None)


def load_digits32(split: Split = "train", size: int = 32, seed: int = 0, epoch: int = 0) -> ImageDataset:
    """The built-in colour digits (see module docstring); ``split`` as in :func:`digit_split`."""
    from sklearn.datasets import load_digits
    d = load_digits()
    idx = digit_split(len(d.target), split)
    images8 = d.images[idx]
    return ImageDataset(render_digits(images8, idx, size, seed, epoch),
                        torch.as_tensor(d.target[idx], dtype=torch.long), num_classes=10,
                        name=f"digits{size}-{split}", _digits8=images8, _indices=idx, _seed=seed)


def load_image_folder(folder: str | Path, size: int) -> ImageDataset:
    """Every image under ``folder`` (recursive), centre-cropped square, resized to ``size``; unlabelled."""
    from PIL import Image
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTS)})")
    out = []
    for p in files:
        im = Image.open(p).convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return ImageDataset(torch.stack(out), None, None, name=str(folder))


def load_dataset(data: str, size: int = 32, seed: int = 0) -> ImageDataset:
    """``"digits"`` (built-in, train split) or a folder of images."""
    if data in ("digits", "digits32"):
        return load_digits32("train", size, seed)
    if not Path(data).is_dir():
        raise ValueError(f"--data must be 'digits' or an existing folder of images, got {data!r}")
    return load_image_folder(data, size)
