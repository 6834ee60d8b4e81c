"""The README's training picture: what a run's TensorBoard event files and sample grids show.

Reads ``RUN/tb`` (the event files ``python -m cm_core train`` writes) with TensorBoard's own
reader and ``RUN/samples/step_*.png`` (``--sample-every``), and draws the loss (with its 50-step
mean), the gradient norm and the curriculum beside the grids of up to four steps. Needs
tensorboard and matplotlib (``requirements-dev.txt``).

    python scripts/training_picture.py runs/ect_digits32 docs/training.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cm_core.train.plot import moving_mean  # noqa: E402


def scalars(run: Path, until: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps, values) of every scalar in ``run/tb`` up to step ``until`` (a stopped run's
    events past its last checkpoint stay in the files until a resume purges them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = [e for e in acc.Scalars(tag) if until is None or e.step <= until]
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return out


def pick_grids(run: Path, count: int = 4) -> list[Path]:
    """Up to ``count`` sample grids spread over the run, the last one included."""
    grids = sorted((run / "samples").glob("step_*.png"))
    if len(grids) <= count:
        return grids
    return [grids[round(i)] for i in np.linspace(0, len(grids) - 1, count)]


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def main(run: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grids = pick_grids(run)
    s = scalars(run, int(grids[-1].stem.split("_")[1]) if grids else None)
    curriculum = [t for t in s if t.startswith("curriculum/")]
    fig = plt.figure(figsize=(11, 5.2), dpi=100)
    panels = fig.subfigures(1, 2, width_ratios=[1.1, 1])
    left = panels[0].subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1, 1]})
    steps, loss = s["train/loss"]
    left[0].plot(steps, loss, color="0.75", lw=0.5)
    left[0].plot(steps, moving_mean(loss), color="C0", label="train/loss (50-step mean)")
    left[1].plot(*s["train/grad_norm"], color="C3", lw=0.6, label="train/grad_norm")
    if curriculum:
        left[2].step(*s[curriculum[0]], where="post", color="C2", label=curriculum[0])
    left[2].set_xlabel("step")
    for ax in left:
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    panels[0].suptitle(f"TensorBoard scalars of {run.name} (from {run.name}/tb)", fontsize=10)
    right = panels[1].subplots(2, 2)
    for ax, path in zip(right.flat, grids):
        ax.imshow(np.asarray(Image.open(path)), interpolation="nearest")
        ax.set_title(f"step {int(path.stem.split('_')[1])}", fontsize=9)
    for ax in right.flat:
        ax.axis("off")
    panels[1].suptitle("--sample-every grids: the EMA network, one step, fixed seeds", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
