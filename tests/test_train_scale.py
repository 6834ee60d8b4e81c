"""Training at scale: 2 gloo ranks under torchrun equal 1 rank for edm, ict and ect (and resume
across world sizes), accumulation / checkpointing / workers do not change a run, checkpoints
survive a kill mid-save."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cm_core.train import TrainConfig, run_training

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(data="digits", image_size=8, num_channels=32, channel_mult="1,1",
            attention_resolutions="", num_head_channels=32, batch_size=8, warmup=1, lr=0.2,
            threads=1, save_every=2, device="cpu", dropout=0.1, optimizer="radam")
# RAdam (the original's optimizer) on purpose: Adam divides each gradient by its own magnitude, so
# the float-reduction noise of parameters whose gradient is analytically zero (a bias cancelled by
# the GroupNorm after it, the attention key bias) turns into steps of up to ~0.1 lr; those
# parameters do not change the network's function, but they would drown a 1e-5 weight comparison.
# lr 0.2: RAdam takes momentum-SGD steps for its first ~5 steps, so the nets visibly move.
CLI_TINY = ["--data", "digits", "--image-size", "8", "--num-channels", "32", "--channel-mult", "1,1",
            "--attention-resolutions", "", "--num-head-channels", "32", "--batch-size", "8",
            "--warmup", "1", "--lr", "0.2", "--threads", "1", "--save-every", "2",
            "--device", "cpu", "--dropout", "0.1", "--optimizer", "radam", "--quiet"]


def _run(out: Path, steps: int, method: str = "edm", **kw) -> dict:
    return run_training(TrainConfig(method=method, out=str(out), steps=steps, **{**TINY, **kw}),
                        resume=True, progress=False)


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc ARGS`` on gloo, one thread per rank."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _torchrun_cli(out: Path, steps: int) -> subprocess.CompletedProcess:
    """``torchrun ... -m cm_core train edm`` with the tiny settings, as a user starts a run."""
    return _torchrun("-m", "cm_core", "train", "edm", "--out", str(out), "--steps", str(steps), *CLI_TINY)


METHODS = ("edm", "ict", "ect")  # compared across world sizes


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Each of METHODS trained 4 steps on 2 gloo ranks (one launch): ``folder / method``."""
    out = tmp_path_factory.mktemp("two_ranks")
    _torchrun(str(ROOT / "tests" / "train_ranks.py"), str(out), "4", *METHODS)
    return out


def _log_losses(out: Path) -> list[float]:
    return [float(line.split(",")[1]) for line in (out / "log.csv").read_text().splitlines()]


def _close(a: Path, b: Path, atol: float = 1e-5) -> float:
    """Largest absolute difference between two safetensors files with the same keys."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    worst = max(float((ta[k] - tb[k]).abs().max()) for k in ta if ta[k].numel())
    assert worst < atol, worst
    return worst


def _outputs(state: Path | None) -> torch.Tensor:
    """The online network's outputs on fixed inputs [16, 3, 8, 8] (None: the seeded init)."""
    from cm_core.train.common import build_model
    torch.manual_seed(0)
    model = build_model(TrainConfig(**TINY), torch.device("cpu")).eval()
    if state is not None:
        model.load_state_dict({k[7:]: v for k, v in load_file(str(state)).items() if k.startswith("online.")})
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(16, 3, 8, 8, generator=g), torch.exp(torch.randn(16, generator=g))
    with torch.no_grad():
        return model(x, sigma, torch.arange(16) % 10)


def test_two_gloo_ranks_equal_one_rank_and_resume_on_one(tmp_path: Path, two_ranks: Path) -> None:
    one = _run(tmp_path / "one", 4)
    two = two_ranks / "edm"
    assert _log_losses(two) == pytest.approx(one["losses"], abs=1e-5)
    _close(tmp_path / "one" / "state.safetensors", two / "state.safetensors")
    _close(tmp_path / "one" / "model.safetensors", two / "model.safetensors")
    # a 2-rank run of the command line stopped after 2 steps, resumed on 1 rank, reproduces the
    # unbroken run
    res = _torchrun_cli(tmp_path / "split", 2)
    assert res.stdout.count("done: 2 steps") == 1  # rank 0 alone reports (and writes)
    resumed = _run(tmp_path / "split", 4)
    assert len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(one["losses"][2:], abs=1e-5)
    _close(tmp_path / "one" / "state.safetensors", tmp_path / "split" / "state.safetensors")
    # the networks did change (the comparison is not between two untrained nets) and compute
    # the same function
    trained, fresh = _outputs(tmp_path / "one" / "state.safetensors"), _outputs(None)
    assert float((trained - fresh).abs().max()) > 0.1
    assert float((trained - _outputs(two / "state.safetensors")).abs().max()) < 1e-5


@pytest.mark.parametrize("method", ["ict", "ect"])
def test_two_gloo_ranks_equal_one_rank_for_ict_and_ect(tmp_path: Path, two_ranks: Path, method: str) -> None:
    """The per-position noise-level draws, shared noise and dropout masks and the stop-gradient
    target split across ranks exactly as within one process."""
    one = _run(tmp_path / method, 4, method=method)
    assert all(torch.isfinite(torch.tensor(one["losses"])))
    assert _log_losses(two_ranks / method) == pytest.approx(one["losses"], rel=1e-6, abs=1e-5)  # log.csv: 6 decimals
    _close(tmp_path / method / "state.safetensors", two_ranks / method / "state.safetensors")
    trained = _outputs(tmp_path / method / "state.safetensors")
    assert float((trained - _outputs(None)).abs().max()) > 0.1


def test_accumulation_and_checkpointing_do_not_change_the_run(tmp_path: Path) -> None:
    base = _run(tmp_path / "a", 3)
    accum = _run(tmp_path / "b", 3, grad_accum=4)
    ckpt = _run(tmp_path / "c", 3, grad_checkpoint=True)
    assert accum["losses"] == pytest.approx(base["losses"], abs=1e-5)
    assert ckpt["losses"] == pytest.approx(base["losses"], abs=1e-6)
    _close(tmp_path / "a" / "state.safetensors", tmp_path / "b" / "state.safetensors")
    _close(tmp_path / "a" / "state.safetensors", tmp_path / "c" / "state.safetensors")


def test_dropout_masks_follow_positions(tmp_path: Path) -> None:
    """Dropout is on in training (p = cfg.dropout) and seeded per position: a different seed
    gives other masks, the same seed the same ones."""
    from cm_core.train.dropout import (
        TrainDropout,
        install_train_dropout,
        position_dropout,
    )
    net = torch.nn.Sequential(torch.nn.Dropout(0.5)).train()
    assert install_train_dropout(net, 0.5) == 1 and isinstance(net[0], TrainDropout)
    x = torch.ones(3, 4, 5)
    with position_dropout(net, 0, [10, 11, 12]):
        a = net(x)
    with position_dropout(net, 0, [12, 99]):
        b = net(x[:2])
    with position_dropout(net, 1, [10]):
        c = net(x[:1])
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], c[0])
    assert set(a.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(net(x), x)  # no keys: identity, as the inference dropout


def test_fp16_bf16_and_radam_train(tmp_path: Path) -> None:
    for prec in ("bf16", "fp16"):
        res = _run(tmp_path / prec, 2, precision=prec, optimizer="radam", ema_rates="0.9,0.99",
                   ema_warmup=False, method="ct", start_scales=2, end_scales=10)
        assert all(torch.isfinite(torch.tensor(res["losses"])))
        files = sorted(p.name for p in (tmp_path / prec).iterdir())
        assert "ema_0.9.safetensors" in files and "ema_0.99.safetensors" in files
    from cm_core.train.state import state_meta
    meta = state_meta(tmp_path / "fp16")
    assert float(meta["scaler_scale"]) <= 2.0 ** 20  # the grad scaler's state is checkpointed


_SAVER = """
import sys, torch
from pathlib import Path
from cm_core.train.state import _atomic_save
path = Path(sys.argv[1])
for i in range(1000):
    _atomic_save({"w": torch.full((20_000_000,), float(i))}, path, {"version": str(i)})
    print(i, flush=True)
"""


def test_checkpoint_survives_kill_mid_save(tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "0"
        deadline = time.time() + 60
        while not tmp.exists() and time.time() < deadline:  # the second save has begun
            time.sleep(0.001)
        assert tmp.exists(), "never caught the saver mid-save"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert tmp.exists()  # it died mid-save, leaving its partial file
    from cm_core.models.checkpoints import read_safetensors
    tensors, meta = read_safetensors(path)
    w = tensors["w"]
    assert w.numel() == 20_000_000 and torch.all(w == float(meta["version"]))


def test_configs_from_before_position_seeding_resume_with_the_legacy_rng() -> None:
    import json
    old = json.loads(TrainConfig().to_json())
    del old["rng"]
    assert TrainConfig.from_json(json.dumps(old)).rng == "step"
    assert TrainConfig().rng == "position"
