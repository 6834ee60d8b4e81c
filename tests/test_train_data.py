"""Training data at scale: ImageNet-layout folders and LSUN lmdb train, preprocessing follows the
original, worker counts do not change a run, bad folders fail clearly; fine-tuning a released .pt."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cm_core.train import TrainConfig, run_training
from cm_core.train.loader import PositionDataset, StepBatches, local_positions
from cm_core.train.sources import FolderSource, LmdbSource, center_crop_arr, open_source

TINY = dict(image_size=8, num_channels=32, channel_mult="1,1", attention_resolutions="",
            num_head_channels=32, batch_size=4, warmup=1, lr=1e-3, threads=1, save_every=100,
            device="cpu")


def _picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _imagenet(root: Path) -> Path:
    for c, wnid in enumerate(["n02", "n01", "n03"]):  # sorted: n01 -> 0, n02 -> 1, n03 -> 2
        (root / wnid).mkdir(parents=True)
        for i in range(3):
            _picture(20 + 7 * i, 13 + 5 * c, 10 * c + i).save(root / wnid / f"{wnid}_{i}.JPEG")
    return root


def _lmdb(path: Path, n: int = 6) -> Path:
    import lmdb
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            buf = io.BytesIO()
            _picture(30 + i, 24, i).save(buf, format="WEBP" if i % 2 else "JPEG")
            txn.put(f"{i:08x}".encode(), buf.getvalue())
    env.close()
    return path


def test_center_crop_arr_matches_the_original_recipe() -> None:
    im = _picture(100, 40, 0)
    out = center_crop_arr(im, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # by hand: 40 >= 2*16 -> box-halve to 50x20, bicubic to 40x16, centre 16 columns
    ref = im.resize((50, 20), Image.BOX).resize((40, 16), Image.BICUBIC)
    assert np.array_equal(out, np.asarray(ref)[:, 12:28])


def test_imagenet_layout_labels_and_training(tmp_path: Path) -> None:
    root = _imagenet(tmp_path / "train")
    src = open_source(str(root), 8, 0)
    assert isinstance(src, FolderSource) and src.class_names == ["n01", "n02", "n03"]
    assert src.num_classes == 3 and len(src) == 9
    assert [src.image(i, 0)[1] for i in range(len(src))] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert Path(src.files[3]).parent.name == "n02"
    res = run_training(TrainConfig(method="ct", data=str(root), out=str(tmp_path / "run"), steps=3,
                                   num_classes=3, start_scales=2, end_scales=10, **TINY), progress=False)
    assert len(res["losses"]) == 3 and all(np.isfinite(res["losses"]))
    from cm_core import load_denoiser
    assert load_denoiser(res["model"], device="cpu").class_cond


def test_too_many_classes_is_a_clear_error(tmp_path: Path) -> None:
    root = _imagenet(tmp_path / "train")
    with pytest.raises(ValueError, match="--num-classes 3"):
        run_training(TrainConfig(method="edm", data=str(root), out=str(tmp_path / "r"), steps=1,
                                 num_classes=2, **TINY), progress=False)


def test_lsun_lmdb_trains_and_workers_do_not_change_the_run(tmp_path: Path) -> None:
    db = _lmdb(tmp_path / "bedroom_train_lmdb")
    src = open_source(str(db), 8, 0)
    assert isinstance(src, LmdbSource) and len(src) == 6 and src.num_classes is None
    runs = [run_training(TrainConfig(method="edm", data=str(db), out=str(tmp_path / f"w{w}"),
                                     steps=3, workers=w, **TINY), progress=False) for w in (0, 2)]
    assert runs[0]["losses"] == runs[1]["losses"]
    from cm_core import load_denoiser
    assert not load_denoiser(runs[0]["model"], device="cpu").class_cond


def test_epochs_visit_every_image_once_and_flip_per_position(tmp_path: Path) -> None:
    root = _imagenet(tmp_path / "train")
    ds = PositionDataset(open_source(str(root), 8, 0), seed=0)
    first = sorted(ds.index_of(s)[0] for s in range(9))
    second = [ds.index_of(s)[0] for s in range(9, 18)]
    assert first == list(range(9)) and sorted(second) == list(range(9))
    assert second != [ds.index_of(s)[0] for s in range(9)]  # each epoch reshuffles
    x, _, _ = ds[4]
    unflipped = PositionDataset(ds.source, seed=0, flip=False)[4][0]
    assert torch.equal(x, unflipped) or torch.equal(x, unflipped.flip(-1))
    flips = [not torch.equal(ds[s][0], PositionDataset(ds.source, 0, False)[s][0]) for s in range(40)]
    assert 10 < sum(flips) < 30


def test_rank_shards_cover_the_global_batch() -> None:
    shards = [list(local_positions(8, 2, r)) for r in range(2)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7]]
    micro = list(StepBatches(3, 5, 8, 2, 1, 2))
    assert micro == [[28, 29], [30, 31], [36, 37], [38, 39]]  # rank 1: positions 4..7 of steps 3, 4
    with pytest.raises(ValueError, match="divisible"):
        local_positions(7, 2, 0)


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "no images found"),
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: None, "does not exist"),
])
def test_bad_data_gets_a_clear_error(tmp_path: Path, make, match: str) -> None:
    path = tmp_path / "data"
    make(path)
    with pytest.raises(ValueError, match=match):
        open_source(str(path), 8, 0)


def test_empty_lmdb_is_a_clear_error(tmp_path: Path) -> None:
    import lmdb
    lmdb.open(str(tmp_path / "db"), map_size=1 << 20).close()
    with pytest.raises(ValueError, match="empty"):
        open_source(str(tmp_path / "db"), 8, 0)


def test_fine_tune_a_released_pt(golden: Path, tmp_path: Path) -> None:
    """--init and --teacher take an original-format .pt (here the golden tiny ImageNet-64 arch)."""
    pt = tmp_path / "my_teacher.pt"
    shutil.copy(golden / "imagenet64_tiny_cd.pt", pt)
    root = _imagenet(tmp_path / "train")
    arch = dict(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2,3,4",
                attention_resolutions="32,16,8", num_head_channels=32, num_classes=1000)
    cfg = TrainConfig(method="cd", data=str(root), out=str(tmp_path / "cd"), steps=1, batch_size=2,
                      teacher=str(pt), init=str(pt), num_scales=4, threads=1, device="cpu",
                      save_every=100, **arch)
    res = run_training(cfg, progress=False)
    assert np.isfinite(res["losses"][0])
    from cm_core import load_denoiser
    start = load_denoiser(str(pt), arch=cfg.arch(), device="cpu").net.state_dict()
    tuned = load_denoiser(res["model"], device="cpu").net.state_dict()
    assert tuned.keys() == start.keys()
    # the EMA after one step stays within a small distance of the released weights it started from
    assert max(float((tuned[k] - start[k]).abs().max()) for k in start) < 0.05
