"""Scale-out sampling: the .npz does not depend on the number of processes or the batch size."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cm_core.models.checkpoints import arch_meta
from cm_core.models.network import build_unet
from cm_core.models.registry import get_spec
from cm_core.sampling.cli import run_sample_command

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cd_digits32"  # 32px, 1.4M parameters: a tiny stand-in with random weights


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    arch = get_spec(MODEL).arch
    torch.manual_seed(0)
    net = build_unet(arch)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata=arch_meta(arch, "cm"))
    return path


def _run(ckpt: Path, out: Path, batch_size: int, steps: int = 2, n: int = 7, fast: bool = False
         ) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun workers: CPU kernels round differently per thread count
    try:
        _sample(ckpt, out, batch_size, steps, n, fast)
    finally:
        torch.set_num_threads(threads)
    return dict(np.load(out))


def _sample(ckpt: Path, out: Path, batch_size: int, steps: int, n: int, fast: bool) -> None:
    run_sample_command(model=MODEL, checkpoint=str(ckpt), num_evals=steps, ts=None, grid_size=None, heun_steps=None,
                       seed=3, class_label=None, num=n, num_samples=None, batch_size=batch_size,
                       dropout=0.0, device="cpu", dtype="float32", out=str(out), fast=fast)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_npz_same_for_1_and_2_processes_and_any_batch(tiny_ckpt, tmp_path):
    one = _run(tiny_ckpt, tmp_path / "a.npz", batch_size=4)
    other_batch = _run(tiny_ckpt, tmp_path / "b.npz", batch_size=3)
    assert one["arr_0"].shape == (7, 32, 32, 3) and one["arr_0"].dtype == np.uint8
    assert one["arr_1"].shape == (7,) and one["arr_1"].dtype == np.int64
    diff = np.abs(one["arr_0"].astype(int) - other_batch["arr_0"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # kernels round ~1e-6 apart per batch size
    assert np.array_equal(one["arr_1"], other_batch["arr_1"])
    fast = _run(tiny_ckpt, tmp_path / "f.npz", batch_size=4, fast=True)  # fp32 channels_last on CPU
    diff = np.abs(one["arr_0"].astype(int) - fast["arr_0"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    out = tmp_path / "two.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "cm_core", "sample", "--model", MODEL,
           "--checkpoint", str(tiny_ckpt), "--steps", "2", "--seed", "3", "--num-samples", "7",
           "--batch-size", "4", "--device", "cpu", "--no-fast", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    two = dict(np.load(out))
    assert np.array_equal(one["arr_0"], two["arr_0"])
    assert np.array_equal(one["arr_1"], two["arr_1"])


def test_gather_strided_single_process_is_identity():
    from cm_core.accel.distributed import gather_strided, shard_size
    assert [shard_size(7, r, 3) for r in range(3)] == [3, 2, 2]
    img, lab = np.zeros((3, 2, 2, 3), np.uint8), np.arange(3)
    a, b = gather_strided(img, lab, 3, 0, 1)
    assert a is img and b is lab


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    """.npz and PNG grids appear only complete: a write that fails leaves neither the file nor a
    partial one behind."""
    from PIL import Image

    from cm_core.sampling import generate
    arr, lab = np.zeros((4, 8, 8, 3), np.uint8), np.arange(4)
    generate.write_samples(str(tmp_path / "s.npz"), arr, lab)
    generate.write_samples(str(tmp_path / "grid.png"), arr, lab)
    with np.load(tmp_path / "s.npz") as f:
        assert f["arr_0"].shape == (4, 8, 8, 3) and f["arr_1"].tolist() == [0, 1, 2, 3]
    assert Image.open(tmp_path / "grid.png").size == (16, 16)

    def killed(path, **arrays):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt
    monkeypatch.setattr(generate.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        generate.write_samples(str(tmp_path / "big.npz"), arr, lab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "s.npz"]
