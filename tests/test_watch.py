"""Training you can watch: TensorBoard event files with the run's figures, fixed-seed sample
grids every --sample-every steps, and `train plot RUN` drawing log.csv."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cm_core.train import TrainConfig, run_training
from cm_core.train.plot import moving_mean, read_log
from cm_core.train.watch import sample_grid
from run_cli import run_cli
from test_train_scale import TINY

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is not installed (requirements-dev.txt)")


def _events(folder: Path):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def ect_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("watch") / "ect"
    cfg = TrainConfig(method="ect", out=str(out), steps=3, **{**TINY, "sample_every": 2})
    return out, run_training(cfg, progress=False)


def test_event_files_hold_the_runs_figures(ect_run):
    out, res = ect_run
    acc = _events(out / "tb")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s", "curriculum/stage"} <= tags
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx(res["losses"], rel=1e-6)
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm"))
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([0.2, 0.2, 0.2])  # warm-up 1
    assert [e.step for e in acc.Images("samples")] == [2, 3]


def test_sample_grids_every_n_steps_and_at_the_end_from_fixed_seeds(ect_run, tmp_path):
    out, _ = ect_run
    files = sorted(p.name for p in (out / "samples").iterdir())
    assert files == ["step_0000002.png", "step_0000003.png"]  # every 2 steps, and the last
    grid = np.asarray(Image.open(out / "samples" / "step_0000003.png"))
    assert grid.shape == (32, 32, 3) and grid.std() > 0  # 4 x 4 samples of 8 x 8
    from cm_core.models.checkpoints import load_denoiser
    cfg = TrainConfig(method="ect", out=str(out), **TINY)
    den = load_denoiser(out / "model.safetensors", device="cpu")
    np.testing.assert_array_equal(sample_grid(den, cfg), grid)  # the EMA, the same seeds
    edm = TrainConfig(method="edm", out=str(tmp_path / "edm"), steps=1, **{**TINY, "sample_every": 5})
    run_training(edm, progress=False)  # Heun for an EDM network; the last step gets a grid
    assert [p.name for p in (tmp_path / "edm" / "samples").iterdir()] == ["step_0000001.png"]


def test_train_plot_draws_the_log(ect_run, tmp_path):
    out, res = ect_run
    log = read_log(out)
    assert list(log["step"]) == [1, 2, 3] and list(log["loss"]) == pytest.approx(res["losses"], abs=1e-6)
    r = run_cli("train", "plot", str(out))
    assert r.returncode == 0, r.stderr
    png = Image.open(out / "log.png")
    assert png.format == "PNG" and png.size == (700, 700)
    # a resumed run's repeated steps keep their last row; a bad row names its line
    (tmp_path / "log.csv").write_text("1,0.5,0.1,10\n2,0.4,0.1,10\n2,0.3,0.1,10\n")
    assert list(read_log(tmp_path)["loss"]) == [0.5, 0.3]
    (tmp_path / "log.csv").write_text("1,0.5,0.1,10\nstep,loss\n")
    with pytest.raises(ValueError, match="line 2: expected step, loss, lr, images_per_s"):
        read_log(tmp_path)
    r = run_cli("train", "plot", str(tmp_path / "absent"))
    assert r.returncode != 0 and "log.csv not found: give the --out folder" in r.stderr


def test_moving_mean_is_the_trailing_mean():
    x = torch.rand(130, generator=torch.Generator().manual_seed(0)).double().numpy()
    want = [x[max(0, i - 49):i + 1].mean() for i in range(len(x))]
    np.testing.assert_allclose(moving_mean(x, 50), want, rtol=1e-12)
