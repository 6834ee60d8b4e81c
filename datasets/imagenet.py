"""Prepare ImageNet (ILSVRC2012 train) in the class-folder layout ``root/<wnid>/<file>``.

ImageNet needs a login: download ``ILSVRC2012_img_train.tar`` (138 GB, 1000 inner per-class
tars) from https://image-net.org/challenges/LSVRC/2012/2012-downloads.php yourself, then

    python datasets/imagenet.py ILSVRC2012_img_train.tar data/imagenet            # JPEGs as they are
    python datasets/imagenet.py ILSVRC2012_img_train.tar data/imagenet64 --size 64

``--size`` stores each image already centre-cropped and box-downsampled (the training recipe,
``center_crop_arr``) as PNG, which makes 64x64 training I/O-light. The source may also be an
extracted folder: of per-class tars, or of files named ``<wnid>_<n>.JPEG`` (the original code's
layout), which are sorted into class folders. Labels are the sorted folder names, as the original.
"""
from __future__ import annotations

import argparse
import re
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WNID = re.compile(r"^(n\d{8}|[A-Za-z0-9]+)_")


def _members(outer: tarfile.TarFile) -> Iterator[tuple[str, str, IO[bytes]]]:
    """(wnid, file name, stream) of every image in a tar of per-class tars."""
    for m in outer:
        if not m.isfile():
            continue
        f = outer.extractfile(m)
        assert f is not None
        if m.name.endswith(".tar"):
            wnid = Path(m.name).stem
            with tarfile.open(fileobj=f, mode="r|") as inner:
                for im in inner:
                    if im.isfile():
                        yield wnid, Path(im.name).name, inner.extractfile(im)  # type: ignore[misc]
        else:
            yield _wnid(m.name), Path(m.name).name, f


def _wnid(name: str) -> str:
    match = WNID.match(Path(name).name)
    if not match:
        raise SystemExit(f"{name}: cannot tell its class (expected <wnid>_<n>.JPEG)")
    return match.group(1)


def _folder_members(src: Path) -> Iterator[tuple[str, str, IO[bytes]]]:
    for p in sorted(src.iterdir()):
        if p.suffix == ".tar":
            with tarfile.open(p) as t:
                for im in t:
                    if im.isfile():
                        yield p.stem, Path(im.name).name, t.extractfile(im)  # type: ignore[misc]
        elif p.is_file():
            with open(p, "rb") as f:
                yield _wnid(p.name), p.name, f


def prepare(src: Path, out: Path, size: int | None = None, limit_classes: int | None = None) -> int:
    """Write ``out/<wnid>/<file>`` (or ``.png`` at ``size``); returns the number of images."""
    from PIL import Image

    from cm_core.train.sources import center_crop_arr
    members = _folder_members(src) if src.is_dir() else _members(tarfile.open(src, mode="r|"))
    classes: set[str] = set()
    n = 0
    for wnid, name, stream in members:
        if limit_classes is not None and wnid not in classes and len(classes) >= limit_classes:
            continue
        classes.add(wnid)
        (out / wnid).mkdir(parents=True, exist_ok=True)
        if size is None:
            (out / wnid / name).write_bytes(stream.read())
        else:
            with Image.open(stream) as im:
                Image.fromarray(center_crop_arr(im, size)).save(out / wnid / (Path(name).stem + ".png"))
        n += 1
    print(f"wrote {n} images in {len(classes)} classes to {out}")
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="ILSVRC2012_img_train.tar or an extracted folder")
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=None, help="store centre-cropped PNGs of this size")
    ap.add_argument("--limit-classes", type=int, default=None, help="only the first N classes")
    a = ap.parse_args(argv)
    prepare(a.source, a.out, a.size, a.limit_classes)


if __name__ == "__main__":
    main()
