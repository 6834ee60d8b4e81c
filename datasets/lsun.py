"""Fetch and prepare LSUN bedroom / cat for ``python -m cm_core train --data ...``.

    python datasets/lsun.py fetch bedroom --out data/         # -> data/bedroom_train_lmdb/
    python datasets/lsun.py fetch cat --out data/             # -> data/cat/ (an lmdb folder)
    python datasets/lsun.py export data/bedroom_train_lmdb data/bedroom256 --size 256

Training reads the lmdb folder directly (``--data data/bedroom_train_lmdb``); ``export`` writes
centre-cropped PNGs instead (the original's ``lsun_bedroom.py``), e.g. to inspect or to share a
subset (``--limit``). The files are public: bedroom ~43 GB (3,033,042 images), cat ~42 GB
(1,657,266 images); the downloads resume from a ``.part`` file.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCENES = ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room", "dining_room",
          "kitchen", "living_room", "restaurant", "tower")
BASE = "http://dl.yf.io/lsun"


def lsun_url(category: str, split: str = "train", base: str = BASE) -> str:
    """The public download URL of an LSUN category (scenes per split; objects one zip)."""
    if category in SCENES:
        return f"{base}/scenes/{category}_{split}_lmdb.zip"
    return f"{base}/objects/{category}.zip"


def download(url: str, dest: Path, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with an HTTP Range request)."""
    part = dest.with_name(dest.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(req) as r:
        mode = "ab" if done and getattr(r, "status", 200) == 206 else "wb"
        with open(part, mode) as f:
            shutil.copyfileobj(r, f, chunk)
    part.replace(dest)
    return dest


def fetch(category: str, out: Path, base: str = BASE) -> Path:
    """Download and unzip a category into ``out``; returns the lmdb folder (holds data.mdb)."""
    out.mkdir(parents=True, exist_ok=True)
    url = lsun_url(category, base=base)
    archive = out / url.rsplit("/", 1)[-1]
    if not archive.exists():
        print(f"downloading {url} -> {archive}")
        download(url, archive)
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        z.extractall(out)
    folders = sorted({(out / n).parent for n in names if n.endswith("data.mdb")})
    if not folders:
        raise SystemExit(f"{archive}: no data.mdb inside; is it an LSUN lmdb zip?")
    print(f"lmdb: {folders[0]} (train with --data {folders[0]})")
    return folders[0]


def export(db: Path, out: Path, size: int, limit: int | None = None) -> int:
    """Write every image of the lmdb ``db`` as ``out/<key>.png``, centre-cropped to ``size``."""
    from PIL import Image

    from cm_core.train.sources import LmdbSource
    src = LmdbSource(db, size)
    out.mkdir(parents=True, exist_ok=True)
    n = len(src) if limit is None else min(limit, len(src))
    for i in range(n):
        Image.fromarray(src.image(i, 0)[0]).save(out / f"{src.keys[i].decode()}.png")
    print(f"wrote {n} images to {out}")
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and unzip a category's lmdb")
    f.add_argument("category", help="bedroom or cat (any LSUN scene or object works)")
    f.add_argument("--out", type=Path, default=Path("data"))
    f.add_argument("--base-url", default=BASE)
    e = sub.add_parser("export", help="write centre-cropped PNGs from an lmdb")
    e.add_argument("db", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--size", type=int, default=256)
    e.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "fetch":
        fetch(a.category, a.out, a.base_url)
    else:
        export(a.db, a.out, a.size, a.limit)


if __name__ == "__main__":
    main()
