"""Image batches in OpenAI's evaluation layout, read a batch at a time with clear errors.

A batch file is an ``.npz`` whose ``arr_0`` is uint8 [N, H, W, 3] (NHWC, values 0..255), with
optional ``arr_1`` class labels [N] and, in reference batches, precomputed statistics ``mu``,
``sigma`` (pool_3) and ``mu_s``, ``sigma_s`` (spatial). ``arr_0`` is streamed from the zip
member a batch at a time, as OpenAI's evaluator does, so a 50,000-image 256x256 file (9.8 GB)
never sits in memory whole.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TO_UINT8 = "np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8) for x in [-1, 1]"


class SampleFileError(ValueError):
    """A batch file that is missing, unreadable or not in the evaluation layout."""


@dataclass(frozen=True)
class ImageBatchFile:
    """An opened batch file: ``count`` images of ``resolution`` px, labels and statistics if present."""

    path: Path
    count: int
    resolution: int
    labels: np.ndarray | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 [<=batch_size, R, R, 3] arrays in file order."""
        with zipfile.ZipFile(self.path) as zf, zf.open("arr_0.npy") as f:
            shape, _, _ = _read_header(f)
            per_image = int(np.prod(shape[1:]))
            for start in range(0, self.count, batch_size):
                n = min(batch_size, self.count - start)
                data = f.read(n * per_image)
                if len(data) != n * per_image:
                    raise SampleFileError(f"{self.path}: arr_0 ends after {start} + {len(data) // per_image} "
                                          f"of {self.count} images: the file is truncated; write it again")
                yield np.frombuffer(bytearray(data), np.uint8).reshape(n, *shape[1:])  # writable


def _header(zf: zipfile.ZipFile, path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    if "arr_0.npy" not in zf.namelist():
        raise SampleFileError(f"{path}: no arr_0 in the file (it holds {', '.join(zf.namelist()) or 'nothing'}); "
                              "save images with np.savez(path, images_uint8_nhwc[, labels])")
    with zf.open("arr_0.npy") as f:
        return _read_header(f)


def _read_header(f) -> tuple[tuple[int, ...], np.dtype, bool]:  # noqa: ANN001 - a binary file
    """(shape, dtype, fortran_order) of the .npy stream ``f``, left at the start of the data."""
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise SampleFileError(f".npy format version {version} is not supported; save with np.savez")
    shape, fortran, dtype = readers[version](f)
    return shape, dtype, fortran


def _check_images(path: Path, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        hint = " (it looks NCHW: transpose to NHWC with x.transpose(0, 2, 3, 1))" \
            if len(shape) == 4 and shape[1] == 3 else ""
        raise SampleFileError(f"{path}: arr_0 has shape {tuple(shape)}; expected square RGB images "
                              f"[N, H, W, 3]{hint}")
    if dtype != np.uint8:
        raise SampleFileError(f"{path}: arr_0 is {dtype}; expected uint8 values 0..255 (convert with {TO_UINT8})")
    if fortran:
        raise SampleFileError(f"{path}: arr_0 is stored in Fortran order; save np.ascontiguousarray(images)")
    if shape[0] == 0:
        raise SampleFileError(f"{path}: arr_0 holds no images")


def open_batch(path: str | Path, resolution: int | None = None, min_count: int = 2) -> ImageBatchFile:
    """Open and check a batch file (arr_0's header, labels, statistics); the images stay on disk.

    Raises :class:`SampleFileError` for a missing or truncated file, no ``arr_0``, a shape other
    than [N, H, W, 3] with H == W, a dtype other than uint8, fewer than ``min_count`` images,
    labels of the wrong length, or a resolution other than ``resolution`` (when given).
    """
    p = Path(path)
    if not p.is_file():
        raise SampleFileError(f"{p}: no such file")
    try:
        with zipfile.ZipFile(p) as zf:
            shape, dtype, fortran = _header(zf, p)
            _check_images(p, shape, dtype, fortran)
            extra = {n[:-4]: np.lib.format.read_array(zf.open(n), allow_pickle=False) for n in zf.namelist()
                     if n in ("arr_1.npy", "mu.npy", "sigma.npy", "mu_s.npy", "sigma_s.npy")}
            member = zf.getinfo("arr_0.npy")
    except SampleFileError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, numpy and zlib raise many types on a bad file
        raise SampleFileError(f"{p}: not a readable .npz ({type(e).__name__}: {str(e)[:120]}); "
                              "it may be truncated: write or fetch it again") from None
    count = int(shape[0])
    if member.file_size < count * int(np.prod(shape[1:])):
        raise SampleFileError(f"{p}: arr_0 is shorter than its header says: the file is truncated")
    if count < min_count:
        raise SampleFileError(f"{p}: {count} image(s); the statistics need at least {min_count}")
    if resolution is not None and shape[1] != resolution:
        raise SampleFileError(f"{p}: images are {shape[1]}x{shape[2]}, the reference is {resolution}x{resolution}; "
                              "sample at the reference's resolution")
    labels = extra.pop("arr_1", None)
    if labels is not None and labels.shape != (count,):
        raise SampleFileError(f"{p}: arr_1 (labels) has shape {labels.shape}, expected ({count},)")
    return ImageBatchFile(p, count, int(shape[1]), labels, extra)


@dataclass(frozen=True)
class ArrayBatch:
    """An in-memory batch with the interface of :class:`ImageBatchFile` (built-in references)."""

    path: str
    images: np.ndarray  # uint8 [N, R, R, 3]
    labels: np.ndarray | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.count, batch_size):
            yield self.images[start:start + batch_size]
