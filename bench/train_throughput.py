"""Training throughput of a preset's architecture (img/s per process), e.g. ImageNet 64 in bf16.

    python bench/train_throughput.py --preset ct_imagenet64 --precision bf16 --batch 128
    torchrun --standalone --nproc_per_node 8 bench/train_throughput.py --preset ct_imagenet64 --batch 2048
    python bench/train_throughput.py --preset ct_imagenet64 --device cpu --batch 2 --steps 2 --warmup 1

Runs the real training step (:class:`cm_core.train.engine.Trainer`: DDP, autocast, scaler, EMA,
target update) on the built-in digits rendered at the preset's resolution, with ``--loss l2`` so no
LPIPS weights are needed (LPIPS adds a VGG-16 forward and backward per sample). ``--batch`` is the
global batch. Prints one Markdown row: preset, precision, processes, global batch, s/step, img/s
per process, peak memory per process (CUDA).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cm_core.train import TrainConfig
from cm_core.train.engine import Trainer
from cm_core.train.loader import PositionDataset, StepBatches, make_loader
from cm_core.train.parallel import barrier, wrap_ddp
from cm_core.train.presets import preset_fields


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ct_imagenet64")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--grad-checkpoint", action=argparse.BooleanOptionalAction, default=None)
    a = ap.parse_args()
    fields = preset_fields(a.preset)
    if fields["method"] == "cd":
        raise SystemExit("use an edm_ or ct_ preset: CD needs its teacher's weights (it costs a CT "
                         "step plus two teacher forward passes)")
    fields.update(data="digits", loss="l2", precision=a.precision, batch_size=a.batch,
                  grad_accum=a.accum, steps=a.warmup + a.steps, device=a.device, teacher=None,
                  out=tempfile.mkdtemp(prefix="cm_bench_"), num_classes=1000)
    if a.grad_checkpoint is not None:
        fields["grad_checkpoint"] = a.grad_checkpoint
    tr = Trainer(TrainConfig(**fields))
    ddp = wrap_ddp(tr.model, tr.device)
    it = iter(make_loader(PositionDataset(tr.source, 0),
                          StepBatches(0, a.warmup + a.steps, a.batch, tr.world, tr.rank, a.accum), 4))
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            sync()
            barrier()
            t0 = time.perf_counter()
        tr.step(ddp, [next(it) for _ in range(a.accum)], step)
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if tr.device.type == "cuda" else float("nan")
    if tr.rank == 0:
        name = torch.cuda.get_device_name() if tr.device.type == "cuda" else "cpu"
        print(f"| {a.preset} ({fields['method']}) | {name} | {a.precision} | {tr.world} | {a.batch} | "
              f"{dt:.3f} | {a.batch / tr.world / dt:.1f} | {mem:.1f} GiB |")


if __name__ == "__main__":
    main()
