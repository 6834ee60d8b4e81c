"""The CLI end to end on a tiny random model."""
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from run_cli import run_cli
from safetensors.torch import save_file

from cm_core.models.checkpoints import arch_meta
from cm_core.models.network import build_unet
from cm_core.models.registry import get_spec

ROOT = Path(__file__).resolve().parent.parent


def _tiny(tmp_path: Path) -> Path:
    spec = get_spec("cd_digits32")
    path = tmp_path / "tiny.safetensors"
    save_file(build_unet(spec.arch).state_dict(), str(path), metadata=arch_meta(spec.arch, spec.kind))
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)


def test_sample_grid_and_npz(tmp_path):
    ckpt = _tiny(tmp_path)
    r = _run("sample", "--model", "cd_digits32", "--checkpoint", str(ckpt), "--steps", "2", "--seed", "0",
             "--class-label", "7", "--n", "4", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "g.png").size == (64, 64)
    r = _run("sample", "--model", "cd_digits32", "--checkpoint", str(ckpt), "--ts", "0,22,39",
             "--n", "3", "--out", str(tmp_path / "s.npz"))
    assert r.returncode == 0, r.stderr
    data = np.load(tmp_path / "s.npz")
    assert data["arr_0"].shape == (3, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].shape == (3,)


def test_bad_arguments_are_clear(tmp_path):
    r = _run("sample", "--model", "nope", "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "valid names" in r.stderr and "cd_imagenet64_lpips" in r.stderr
    r = _run("sample", "--model", "cd_digits32", "--checkpoint", str(_tiny(tmp_path)), "--ts", "5,2",
             "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "increasing" in r.stderr
    r = _run("sample", "--model", "cd_imagenet64_lpips", "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "fetch_checkpoints.sh cd_imagenet64_lpips" in r.stderr
