"""datasets/ scripts: ImageNet from a tar of per-class tars (or flat files), LSUN fetch from a
(local) URL and export; the results are read by the training sources."""
from __future__ import annotations

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cm_core.train.sources import FolderSource, LmdbSource, open_source

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"datasets_{name}", ROOT / "datasets" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _jpeg(seed: int, w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def _ilsvrc(path: Path, classes: tuple[str, ...] = ("n01440764", "n01443537", "n01484850")) -> Path:
    with tarfile.open(path, "w") as outer:
        for c, wnid in enumerate(classes):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i in range(2):
                    _add(t, f"{wnid}_{i}.JPEG", _jpeg(10 * c + i))
            _add(outer, f"{wnid}.tar", inner.getvalue())
    return path


def test_imagenet_from_the_archive(tmp_path: Path) -> None:
    imagenet = _script("imagenet")
    archive = _ilsvrc(tmp_path / "ILSVRC2012_img_train.tar")
    assert imagenet.prepare(archive, tmp_path / "full") == 6
    src = open_source(str(tmp_path / "full"), 16, 0)
    assert isinstance(src, FolderSource) and src.class_names == ["n01440764", "n01443537", "n01484850"]
    assert imagenet.prepare(archive, tmp_path / "64", size=16, limit_classes=2) == 4
    pngs = sorted((tmp_path / "64").rglob("*.png"))
    assert len(pngs) == 4 and all(Image.open(p).size == (16, 16) for p in pngs)


def test_imagenet_from_flat_original_layout(tmp_path: Path) -> None:
    imagenet = _script("imagenet")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, wnid in enumerate(["n02", "n01", "n02"]):
        (flat / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(i))
    assert imagenet.prepare(flat, tmp_path / "out") == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["n01", "n02"]
    (flat / "README").write_text("x")
    with pytest.raises(SystemExit, match="cannot tell its class"):
        imagenet.prepare(flat, tmp_path / "out2")


def test_lsun_urls_fetch_and_export(tmp_path: Path) -> None:
    import lmdb
    lsun = _script("lsun")
    assert lsun.lsun_url("bedroom") == "http://dl.yf.io/lsun/scenes/bedroom_train_lmdb.zip"
    assert lsun.lsun_url("cat") == "http://dl.yf.io/lsun/objects/cat.zip"
    # a stand-in of the public zip, served from a file:// URL
    db = tmp_path / "src" / "bedroom_train_lmdb"
    db.parent.mkdir()
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(3):
            txn.put(f"img{i}".encode(), _jpeg(i, 300, 260))
    env.close()
    site = tmp_path / "site" / "scenes"
    site.mkdir(parents=True)
    with zipfile.ZipFile(site / "bedroom_train_lmdb.zip", "w") as z:
        for f in db.iterdir():
            z.write(f, f"bedroom_train_lmdb/{f.name}")
    got = lsun.fetch("bedroom", tmp_path / "data", base=(tmp_path / "site").as_uri())
    assert got == tmp_path / "data" / "bedroom_train_lmdb"
    src = open_source(str(got), 32, 0)
    assert isinstance(src, LmdbSource) and len(src) == 3 and src.image(0, 0)[0].shape == (32, 32, 3)
    assert lsun.export(got, tmp_path / "png", 64, limit=2) == 2
    assert all(Image.open(p).size == (64, 64) for p in (tmp_path / "png").iterdir())
