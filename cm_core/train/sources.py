"""Training image sources: the built-in digits, an image folder (ImageNet layout) and LSUN lmdb.

A source maps an index ``i`` in ``[0, len)`` to ``(image uint8 [H, W, 3] at the training
resolution, label or -1)`` for a given epoch. Preprocessing follows the original
(guided-diffusion's ``center_crop_arr``): halve with a box filter while the short side is at
least twice the target, resize bicubically so the short side equals the target, centre crop.
The random horizontal flip is applied later, per sample position (:mod:`.loader`).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import IMAGE_EXTS, digit_colours, digit_split

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

LMDB_MARKER = "data.mdb"
_ENVS: dict[tuple[int, str], object] = {}  # (pid, database path) -> lmdb.Environment


def center_crop_arr(im: PILImage, size: int) -> np.ndarray:
    """``im`` (any mode) -> uint8 [size, size, 3]: box-halving, bicubic resize, centre crop."""
    from PIL import Image
    im = im.convert("RGB")
    while min(im.size) >= 2 * size:
        im = im.resize((im.width // 2, im.height // 2), resample=Image.BOX)
    scale = size / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), resample=Image.BICUBIC)
    arr = np.asarray(im)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size].copy()


class DigitsSource:
    """The built-in colour digits (train split): colours redrawn per ``(seed, epoch, index)``
    exactly as :func:`cm_core.data.render_digits` does, one image at a time."""

    num_classes = 10

    def __init__(self, size: int, seed: int) -> None:
        import torch
        import torch.nn.functional as F
        from sklearn.datasets import load_digits
        d = load_digits()
        self.indices = digit_split(len(d.target), "train")
        a = torch.from_numpy(np.asarray(d.images[self.indices], dtype=np.float32) / 16.0)[:, None]
        self.alpha = F.interpolate(a, size=(size, size), mode="bilinear",
                                   align_corners=False).clamp(0, 1)[:, 0].numpy()
        self.labels = d.target[self.indices].astype(np.int64)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        """Float image [H, W, 3] in [-1, 1] (already at the resolution) and its digit."""
        fg, bg = digit_colours(int(self.indices[i]), self.seed, epoch)
        a = self.alpha[i][:, :, None]
        rgb = (bg.astype(np.float32) * (1 - a) + fg.astype(np.float32) * a) * 2 - 1
        return rgb.astype(np.float32), int(self.labels[i])


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


class FolderSource:
    """Images under ``folder``. With class subfolders (the ImageNet layout ``root/<wnid>/*.JPEG``)
    labels are the indices of the sorted folder names; images directly in ``root`` make an
    unlabelled set (e.g. an exported LSUN category)."""

    def __init__(self, folder: str | Path, size: int) -> None:
        root = Path(folder)
        self.size = size
        top = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _image_files(p))
        if top or not classes:
            self.files, self.labels, self.class_names = _image_files(root), None, []
        else:
            self.class_names = classes
            self.files, labels = [], []
            for c, name in enumerate(classes):
                found = _image_files(root / name)
                self.files += found
                labels += [c] * len(found)
            self.labels = np.asarray(labels, dtype=np.int64)
        if not self.files:
            raise ValueError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTS)} files, "
                             "directly inside or in one subfolder per class)")
        self.num_classes = len(self.class_names) or None

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        from PIL import Image
        with Image.open(self.files[i]) as im:
            arr = center_crop_arr(im, self.size)
        return arr, int(self.labels[i]) if self.labels is not None else -1


class LmdbSource:
    """An LSUN lmdb export (``<category>_train_lmdb/`` with ``data.mdb``): every value is an
    encoded image (webp/jpeg); unlabelled. The environment is opened lazily in each process, so
    DataLoader workers each get their own handle."""

    num_classes = None

    def __init__(self, folder: str | Path, size: int) -> None:
        self.path, self.size = str(folder), size
        with self._open().begin(write=False) as txn:
            self.keys: list[bytes] = list(txn.cursor().iternext(keys=True, values=False))
        if not self.keys:
            raise ValueError(f"{folder}: the lmdb database is empty")

    def _open(self):
        try:
            import lmdb
        except ImportError:
            raise ValueError("reading LSUN lmdb needs the 'lmdb' package: pip install lmdb") from None
        # lmdb allows one handle per database and process; forked workers open their own
        k = (os.getpid(), os.path.realpath(self.path))
        if k not in _ENVS:
            for other in [o for o in _ENVS if o[1] == k[1]]:  # a handle inherited through fork
                _ENVS.pop(other).close()
            _ENVS[k] = lmdb.open(self.path, readonly=True, lock=False, readahead=False,
                                 meminit=False, max_readers=64)
        return _ENVS[k]

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, i: int, epoch: int) -> tuple[np.ndarray, int]:
        from PIL import Image
        with self._open().begin(write=False) as txn:
            buf = txn.get(self.keys[i])
        with Image.open(io.BytesIO(buf)) as im:
            return center_crop_arr(im, self.size), -1


Source = DigitsSource | FolderSource | LmdbSource


def open_source(data: str, size: int, seed: int) -> Source:
    """``"digits"``, an lmdb folder (holds ``data.mdb``) or an image folder; clear errors else."""
    if data in ("digits", "digits32"):
        return DigitsSource(size, seed)
    path = Path(data).expanduser()
    if not path.exists():
        raise ValueError(f"--data {data!r} does not exist; give 'digits', an image folder "
                         "(optionally one subfolder per class) or an LSUN lmdb folder")
    if path.is_file():
        raise ValueError(f"--data {data!r} is a file; give a folder of images or an LSUN lmdb "
                         "folder (one holding data.mdb), or 'digits'")
    if (path / LMDB_MARKER).is_file():
        return LmdbSource(path, size)
    return FolderSource(path, size)
