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


CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_archive(path: Path, per_batch: int = 3) -> tuple[Path, np.ndarray, np.ndarray]:
    """A small archive in the format of cifar-10-binary.tar.gz: (path, train labels, train images)."""
    rng = np.random.default_rng(0)
    labels, images = [], []
    with tarfile.open(path, "w:gz") as t:
        _add(t, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(CIFAR_NAMES) + "\n\n").encode())
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            y = rng.integers(0, 10, per_batch, dtype=np.uint8)
            x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            planes = x.transpose(0, 3, 1, 2).reshape(per_batch, -1)  # R, G, B planes, rows in order
            _add(t, f"cifar-10-batches-bin/{name}", np.concatenate([y[:, None], planes], 1).tobytes())
            if name != "test_batch.bin":
                labels.append(y)
                images.append(x)
    return path, np.concatenate(labels), np.concatenate(images)


def test_cifar10_binary_archive_becomes_class_folders(tmp_path: Path) -> None:
    cifar = _script("cifar10")
    archive, labels, images = _cifar_archive(tmp_path / "cifar-10-binary.tar.gz")
    assert cifar.prepare(archive, tmp_path / "train") == 15
    for i, (y, x) in enumerate(zip(labels, images)):  # bytes decoded exactly, into its class folder
        png = tmp_path / "train" / f"{y}_{CIFAR_NAMES[y]}" / f"train_{i:05d}.png"
        assert np.array_equal(np.asarray(Image.open(png)), x)
    src = open_source(str(tmp_path / "train"), 32, 0)
    assert isinstance(src, FolderSource) and src.class_names == sorted(f"{y}_{CIFAR_NAMES[y]}" for y in set(labels))
    assert cifar.prepare(archive, tmp_path / "test", split="test") == 3
    (tmp_path / "cut.tar.gz").write_bytes(b"")
    with tarfile.open(tmp_path / "cut.tar.gz", "w:gz") as t:
        _add(t, "cifar-10-batches-bin/batches.meta.txt", b"airplane\n")
        _add(t, "cifar-10-batches-bin/test_batch.bin", b"\x00" * 100)
    with pytest.raises(SystemExit, match="not a whole number"):
        cifar.prepare(tmp_path / "cut.tar.gz", tmp_path / "bad", split="test")
    with pytest.raises(SystemExit, match="no data_batch_1.bin"):
        cifar.prepare(tmp_path / "cut.tar.gz", tmp_path / "bad")
