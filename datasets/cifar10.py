"""Prepare CIFAR-10 for ``python -m cm_core train --data ...`` from its binary version.

    python datasets/cifar10.py fetch --out data                          # -> data/cifar-10-binary.tar.gz
    python datasets/cifar10.py prepare data/cifar-10-binary.tar.gz data/cifar10          # 50,000 PNGs
    python datasets/cifar10.py prepare data/cifar-10-binary.tar.gz data/cifar10-test --split test

The binary version (``cifar-10-binary.tar.gz``, 162 MB) holds raw bytes, so nothing is unpickled:
each record of ``cifar-10-batches-bin/data_batch_{1..5}.bin`` (train) or ``test_batch.bin`` is
1 label byte and 3,072 pixel bytes (the red, green and blue 32x32 planes, rows in order); the
class names are ``batches.meta.txt``. Images go to one folder per class, named ``<label>_<name>``
(``0_airplane`` ... ``9_truck``) so that the training source's sorted folder order is CIFAR's
label order, as PNG files ``<split>_<index>.png`` (lossless).
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lsun import download  # noqa: E402 - the same resumable download

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
RECORD = 1 + 3 * 32 * 32
FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def read_records(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N] uint8, images [N, 32, 32, 3] uint8) of one batch file's bytes."""
    if not data or len(data) % RECORD:
        raise SystemExit(f"{name}: {len(data)} bytes is not a whole number of {RECORD}-byte records; "
                         "the archive is truncated or not CIFAR-10's binary version")
    rec = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    labels = rec[:, 0]
    if labels.max() > 9:
        raise SystemExit(f"{name}: label {int(labels.max())} is not a CIFAR-10 class (0..9)")
    return labels, rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def prepare(archive: Path, out: Path, split: str = "train", limit: int | None = None) -> int:
    """Write ``split``'s images as class-folder PNGs under ``out``; returns how many."""
    from PIL import Image
    if split not in FILES:
        raise SystemExit(f"--split must be train or test, got {split!r}")
    with tarfile.open(archive) as t:
        members = {Path(m.name).name: m for m in t.getmembers() if m.isfile()}
        missing = [n for n in ["batches.meta.txt", *FILES[split]] if n not in members]
        if missing:
            raise SystemExit(f"{archive}: no {', '.join(missing)} inside; is it cifar-10-binary.tar.gz?")
        names = [n.strip() for n in t.extractfile(members["batches.meta.txt"]).read().decode().split("\n") if n.strip()]
        count = 0
        for fname in FILES[split]:
            labels, images = read_records(t.extractfile(members[fname]).read(), fname)
            for label, image in zip(labels, images):
                if limit is not None and count >= limit:
                    return count
                folder = out / f"{label}_{names[label]}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{split}_{count:05d}.png")
                count += 1
    print(f"{count} images in {out} (train with --data {out})")
    return count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download cifar-10-binary.tar.gz (resumable)")
    f.add_argument("--out", type=Path, default=Path("data"))
    f.add_argument("--url", default=URL)
    p = sub.add_parser("prepare", help="write class-folder PNGs from the archive")
    p.add_argument("archive", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--split", default="train", choices=sorted(FILES))
    p.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "fetch":
        a.out.mkdir(parents=True, exist_ok=True)
        print(download(a.url, a.out / "cifar-10-binary.tar.gz"))
    else:
        prepare(a.archive, a.out, a.split, a.limit)


if __name__ == "__main__":
    main()
