"""Sample quality of the embedded digit models against network evaluations (a benchmark, not a test).

Each row is ``python -m cm_core evaluate MODEL --num-samples N --features digits`` run through the
library: class-conditional samples with per-image seeds, the Frechet distance (FD) on the digits
classifier's features against the real training-split digits, precision/recall there, the
classifier's 10-class score, and class accuracy. Consistency models at 1, 2 and 4 evaluations, the
EDM teacher with Heun at several step counts. Writes ``bench/QUALITY.md`` (the table, with the
paper's FID table for the released models beside it) and ``docs/quality.png`` (FD against network
evaluations). Needs matplotlib (``pip install matplotlib``) for the plot.

    python bench/quality.py                   # 2,000 samples per row, runs in evals/quality/
    python bench/quality.py --num-samples 500 # quicker
    python bench/quality.py --candidate ect_digits32=runs/ect/model.safetensors

``--candidate NAME=FILE`` adds a consistency model trained here (weights for the default model's
network) at 1 and 2 evaluations, in a table of its own, checked against what a new default must
show: one-step FD at least 25% below the default's, two-step FD below one-step, one-step class accuracy >= 0.97.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cm_core.accel.cpu import cpu_description  # noqa: E402
from cm_core.evaluation.digits import real_digits_uint8  # noqa: E402
from cm_core.evaluation.evaluate import evaluate_files  # noqa: E402
from cm_core.evaluation.run_model import evaluate_model, settings_label  # noqa: E402
from cm_core.models.registry import DEFAULT_MODEL, get_spec  # noqa: E402
from cm_core.sampling.generate import SampleSettings  # noqa: E402

RUNS = [("cd_digits32", SampleSettings(num_evals=n)) for n in (1, 2, 4)] + \
       [("ct_digits32", SampleSettings(num_evals=n)) for n in (1, 2, 4)] + \
       [("edm_digits32", SampleSettings(heun_steps=k)) for k in (4, 8, 18)]
PAPER = """| dataset | CD 1 step | CD 2 steps | CT 1 step | CT 2 steps | EDM teacher (79 evals) |
| --- | --- | --- | --- | --- | --- |
| ImageNet 64 (class-cond.) | 6.20 | 4.70 | 13.0 | 11.1 | 2.44 |
| LSUN bedroom 256 | 7.80 | 5.22 | 16.0 | 7.85 | 3.57 |
| LSUN cat 256 | 11.0 | 8.84 | 20.7 | 11.7 | 6.69 |"""


def real_row(num: int) -> dict:
    """Real digits evaluated like samples, the floor of each figure: the held-out split against the
    training split; class accuracy on the training split (the SVM learnt the held-out digits)."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for split in ("train", "heldout"):
            images, labels = real_digits_uint8(split)
            path = Path(d) / f"{split}.npz"
            np.savez(path, images[:num], labels[:num])
            out[split] = evaluate_files(path, "digits32", "digits", device="cpu", progress=False, write_json=False)
    return {**out["heldout"], "class_accuracy": out["train"]["class_accuracy"]}


def timed_run(model: str, settings: SampleSettings, num_samples: int, folder: str,
              checkpoint: str | None = None) -> dict:
    """One evaluate run (``checkpoint``: other weights for ``model``'s network); its wall seconds
    are those of the run that sampled (kept beside it)."""
    clock = Path(folder) / "bench_seconds.json"
    t0 = time.perf_counter()
    r = evaluate_model(model, settings, num_samples, folder, features="digits", batch_size=100, device="cpu",
                       checkpoint=checkpoint)
    if not clock.is_file():
        clock.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    return {**r, "seconds": json.loads(clock.read_text())["seconds"]}


def table(rows: list[dict], real: dict) -> str:
    head = "| model | sampler | network evaluations | FD | class accuracy | precision | recall | score | sampling s |\n" \
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    lines = [f"| real digits (held out, {real['num_samples']}; accuracy: training split) | - | - | {real['fd']:.2f} | {real['class_accuracy']:.3f} "
             f"| {real['precision']:.3f} | {real['recall']:.3f} | {real['score']:.2f} | - |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['setting']} | {r['network_evals']} | {r['fd']:.2f} | {r['class_accuracy']:.3f} "
                     f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['score']:.2f} | {r['seconds']:.0f} |")
    return head + "\n".join(lines)


def targets(name: str, rows: list[dict], default: dict) -> str:
    """Whether candidate ``name`` (its rows at 1 and 2 evaluations) meets what a new default must
    show against ``default`` (the default model's one-step row), and by how much it misses."""
    one, two = (next(r for r in rows if r["model"] == name and r["network_evals"] == n) for n in (1, 2))
    bound = 0.75 * default["fd"]
    checks = [(f"one-step FD <= {bound:.2f} (25% below {default['model']}'s {default['fd']:.2f})",
               one["fd"], one["fd"] <= bound, one["fd"] - bound),
              (f"two-step FD < one-step FD ({one['fd']:.2f})", two["fd"], two["fd"] < one["fd"],
               two["fd"] - one["fd"]),
              ("one-step class accuracy >= 0.97", one["class_accuracy"], one["class_accuracy"] >= 0.97,
               0.97 - one["class_accuracy"])]
    lines = [f"| {what} | {value:.3f} | {'met' if ok else f'missed by {short:.3f}'} |"
             for what, value, ok, short in checks]
    return f"| {name}: target | measured | |\n| --- | --- | --- |\n" + "\n".join(lines)


def candidates_text(cands: list[tuple[str, str]], rows: list[dict], real: dict) -> str:
    """The section on candidate models: their rows and their targets."""
    if not cands:
        return ""
    mine = [r for r in rows if r["model"] in dict(cands)]
    default = next(r for r in rows if r["model"] == DEFAULT_MODEL and r["network_evals"] == 1)
    files = ", ".join(f"`{n}`: run `{Path(f).parent.name}` at step {_step(f)}" for n, f in cands)
    return ("\n## Trained here, not shipped\n\nConsistency models trained on the built-in digits "
            f"({files}), evaluated as above:\n\n{table(mine, real)}\n\n"
            + "\n\n".join(targets(n, rows, default) for n, _ in cands)
            + "\n\nHow they were trained, the recipes tried and why they miss: "
              "`checkpoints/embedded/TRAINING.md`, section 4.\n")


def _step(path: str) -> str:
    """The training step a weights file records (its ``step`` metadata), or ``?``."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return (f.metadata() or {}).get("step", "?")


def plot(rows: list[dict], real: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for model, style in (("cd_digits32", "o-"), ("ct_digits32", "s-"), ("edm_digits32", "^-")):
        pts = sorted((r["network_evals"], r["fd"]) for r in rows if r["model"] == model)
        if pts:
            ax.plot(*zip(*pts), style, label=model + (" (Heun)" if model.startswith("edm") else ""))
    ax.axhline(real["fd"], color="grey", ls="--", lw=1, label="real held-out digits")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FD (digits classifier features)")
    ax.set_title(f"Embedded digit models, {rows[0]['num_samples']} samples each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


@click.command()
@click.option("--num-samples", default=2000, show_default=True)
@click.option("--out", default="evals/quality", show_default=True, help="run folders (resumed)")
@click.option("--threads", default=2, show_default=True)
@click.option("--candidate", "candidate", multiple=True, metavar="NAME=FILE",
              help="a consistency model trained here (digits network weights), checked against the default")
def main(num_samples: int, out: str, threads: int, candidate: tuple[str, ...]) -> None:
    torch.set_num_threads(threads)
    cands = [tuple(c.split("=", 1)) for c in candidate]
    if any(len(c) != 2 or not Path(c[1]).is_file() for c in cands):
        raise click.BadParameter(f"give NAME=FILE with an existing weights file, got {candidate}")
    trained_here = dict(cands)
    rows = []
    runs = [(m, s, None, m) for m, s in RUNS] + \
           [(DEFAULT_MODEL, SampleSettings(num_evals=n), f, name) for name, f in cands for n in (1, 2)]
    for model, settings, checkpoint, name in runs:
        label = settings_label(get_spec(model), settings)
        r = {**timed_run(model, settings, num_samples, f"{out}/{name}/{label}", checkpoint), "model": name}
        rows.append(r)
        print(f"{name} {label} ({settings.evaluations(get_spec(model))} evals): FD {r['fd']:.2f}, "
              f"accuracy {r['class_accuracy']:.3f}", flush=True)
    real = real_row(num_samples)
    text = (f"# Sample quality of the embedded models\n\n"
            f"Measured with `python bench/quality.py --num-samples {num_samples}` (the `evaluate` command's code, "
            f"`--features digits`) on {cpu_description()}, {threads} threads, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}.\n\n"
            "FD: Frechet distance between the digits classifier's hidden features of the samples and of the "
            "1,347 real training-split digits (lower is better). Class accuracy: the requested class, as an SVM "
            "trained only on the 450 held-out real digits recognises it. Precision/recall: k-NN manifolds "
            "(k=3) in the same features. Score: the Inception-Score formula over the classifier's 10 classes "
            "(at most 10). The first row evaluates real digits the same way: the held-out split against the "
            "training split, and class accuracy on the training split, which the SVM never saw. Sampling "
            "seconds: wall time of the run that sampled, feature extraction included.\n\n"
            f"{table([r for r in rows if r['model'] not in trained_here], real)}\n\n"
            "![FD against network evaluations](../docs/quality.png)\n\n"
            "## The paper's FID for the released models (Song et al. 2023, Tables 2 and 3; the paper's numbers, "
            "not measured here)\n\nFID with OpenAI's evaluator (TF Inception, the `VIRTUAL_*` reference "
            "batches), 50,000 samples. Reproduce a row with `python -m cm_core fetch cd_imagenet64_lpips` and "
            "`python -m cm_core fetch --ref imagenet64 --ref inception`, then `python -m cm_core evaluate "
            "cd_imagenet64_lpips --num-samples 50000 --num-evals 2` (under `torchrun` on GPUs).\n\n"
            f"{PAPER}\n\n(CD rows use the LPIPS checkpoints.)\n" + candidates_text(cands, rows, real))
    (ROOT / "bench" / "QUALITY.md").write_text(text)
    plot(rows, real, ROOT / "docs" / "quality.png")
    print(text)


if __name__ == "__main__":
    main()
