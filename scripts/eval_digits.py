"""Quality benchmark of the embedded digit models (a benchmark script, not a test).

For each model: class-conditional samples (``--per-class`` per digit, per-image seeds), the
accuracy with which a classifier trained only on real held-out digits recognises the requested
class, and the Frechet distance (FD) between that classifier's hidden features of the samples and
of real training-split digits. Consistency models are evaluated one-step and two-step, the EDM
teacher with the Heun sampler. Also times one-step generation of 16 images. Prints a markdown table.

    python scripts/eval_digits.py                       # the three embedded models
    python scripts/eval_digits.py --cd runs/cd/model.safetensors --ct none --edm none
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cm_core import load_denoiser  # noqa: E402
from cm_core.models.denoiser import Denoiser  # noqa: E402
from cm_core.models.registry import REGISTRY  # noqa: E402
from cm_core.sampling import heun, initial_noise, make_generators, multistep, onestep  # noqa: E402
from cm_core.evaluation.digits import DigitClassifier, digit_frechet_distance as frechet_distance  # noqa: E402
from cm_core.train.data import load_digits32  # noqa: E402


@dataclass
class Row:
    model: str
    sampler: str
    nfe: int
    accuracy: float
    fd: float
    seconds: float


@torch.no_grad()
def sample(den: Denoiser, labels: torch.Tensor, sampler: str, seed: int, batch: int = 200,
           ts: tuple[int, ...] = (0, 22, 39), grid: int = 40, heun_steps: int = 18) -> torch.Tensor:
    """Samples [N, 3, 32, 32] in [-1, 1] for ``labels`` [N]; ``sampler``: onestep|twostep|heun."""
    out = []
    for i in range(0, len(labels), batch):
        y = labels[i:i + batch]
        gens = make_generators(seed + i, len(y))
        x_t = initial_noise((len(y), 3, den.image_size, den.image_size), gens, den.sigma_max)
        if sampler == "onestep":
            out.append(onestep(den, x_t, y))
        elif sampler == "twostep":
            out.append(multistep(den, x_t, ts, grid, gens, y))
        else:
            out.append(heun(den, x_t, heun_steps, y))
    return torch.cat(out)


def evaluate(name: str, den: Denoiser, sampler: str, nfe: int, clf: DigitClassifier,
             real_feats: np.ndarray, per_class: int, seed: int, **kw) -> Row:
    """One table row: accuracy of the requested class and FD against real digits."""
    labels = torch.arange(10).repeat_interleave(per_class)
    t0 = time.time()
    x = sample(den, labels, sampler, seed, **kw)
    secs = time.time() - t0
    acc = float((clf.predict(x) == labels.numpy()).mean())
    return Row(name, sampler, nfe, acc, frechet_distance(clf.features(x), real_feats), secs)


def time_onestep(den: Denoiser, n: int = 16, repeats: int = 7) -> float:
    """Median wall time (s) of one-step generation of ``n`` images, noise included (after warm-up)."""
    labels = torch.arange(n) % 10
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            x_t = initial_noise((n, 3, den.image_size, den.image_size), make_generators(r, n))
            onestep(den, x_t, labels)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _load(source: str) -> Denoiser | None:
    if source.lower() == "none":
        return None
    return load_denoiser(source, device="cpu")


@click.command()
@click.option("--cd", default="cd_digits32", show_default=True, help="CD model (name/path/none)")
@click.option("--ct", default="ct_digits32", show_default=True, help="CT model (name/path/none)")
@click.option("--edm", default="edm_digits32", show_default=True, help="EDM teacher (name/path/none)")
@click.option("--per-class", default=100, show_default=True, help="samples per digit")
@click.option("--heun-steps", default=18, show_default=True)
@click.option("--ts", default=None, help="two-step indices (default: the registry's ts)")
@click.option("--grid", default=None, type=int, help="grid size for --ts (default: registry steps)")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--json-out", type=click.Path(), default=None, help="also write the figures as JSON")
def main(cd: str, ct: str, edm: str, per_class: int, heun_steps: int, ts: str | None,
         grid: int | None, seed: int, threads: int, json_out: str | None) -> None:
    """Print the markdown quality table of the digit models."""
    torch.set_num_threads(threads)
    clf = DigitClassifier()
    real_train = load_digits32("train", epoch=2000)
    real_feats = clf.features(real_train.images)
    held = load_digits32("heldout", epoch=3000)
    real_acc = float((clf.predict(real_train.images) == real_train.labels.numpy()).mean())
    real_fd = frechet_distance(clf.features(held.images), real_feats)
    rows: list[Row] = []
    spec = REGISTRY["cd_digits32"]
    ts_t = tuple(int(t) for t in ts.split(",")) if ts else spec.ts
    grid = grid or spec.grid_size
    timing = None
    for name, src in (("CD", cd), ("CT", ct)):
        den = _load(src)
        if den is None:
            continue
        for sampler, nfe in (("onestep", 1), ("twostep", len(ts_t) - 1)):
            rows.append(evaluate(name, den, sampler, nfe, clf, real_feats, per_class, seed,
                                 ts=ts_t, grid=grid))
        if name == "CD":
            timing = time_onestep(den)
    teacher = _load(edm)
    if teacher is not None:
        rows.append(evaluate("EDM teacher", teacher, "heun", 2 * heun_steps - 1, clf, real_feats,
                             per_class, seed, heun_steps=heun_steps))
    _print(rows, real_acc, real_fd, timing, per_class, ts_t, grid)
    if json_out:
        Path(json_out).write_text(json.dumps({"rows": [r.__dict__ for r in rows],
                                              "real_accuracy": real_acc, "real_fd": real_fd,
                                              "onestep16_seconds": timing}, indent=2))


def _print(rows: list[Row], real_acc: float, real_fd: float, timing: float | None,
           per_class: int, ts: tuple[int, ...], grid: int) -> None:
    print(f"\n{per_class * 10} class-conditional samples per row ({per_class} per digit); "
          f"two-step ts={ts} on a {grid}-point grid.\n")
    print("| model | sampler | NFE | class accuracy | FD (classifier features) | sampling time (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| real digits (train split) | - | - | {real_acc:.3f} | {real_fd:.2f} (held-out vs train) | - |")
    for r in rows:
        print(f"| {r.model} | {r.sampler} | {r.nfe} | {r.accuracy:.3f} | {r.fd:.2f} | {r.seconds:.1f} |")
    if timing is not None:
        print(f"\nOne-step generation of 16 images with CD, {torch.get_num_threads()} CPU threads: "
              f"{timing * 1000:.0f} ms (median of 7)")


if __name__ == "__main__":
    main()
