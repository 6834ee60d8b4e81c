"""``python -m cm_core train plot RUN``: a run's ``log.csv`` drawn as a PNG (loss, learning
rate, images/s against the step), for those without TensorBoard. Needs matplotlib
(``requirements-dev.txt``)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..models.files import atomic_path

COLUMNS = ("step", "loss", "lr", "images_per_s")  # log.csv's rows (no header)
SMOOTH = 50  # steps in the loss curve's moving mean


def read_log(run: str | os.PathLike) -> dict[str, np.ndarray]:
    """``RUN/log.csv`` as float64 columns :data:`COLUMNS`; a resumed run's repeated steps keep
    their last row. ValueError naming the file when it is missing, empty or not a training log."""
    path = Path(run) / "log.csv"
    if not path.is_file():
        raise ValueError(f"{path} not found: give the --out folder of a training run")
    rows: dict[float, list[float]] = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            try:
                values = [float(v) for v in row[:len(COLUMNS)]]
            except ValueError:
                values = []
            if len(values) != len(COLUMNS):
                raise ValueError(f"{path}, line {line}: expected {', '.join(COLUMNS)}, got {row!r}")
            rows[values[0]] = values
    if not rows:
        raise ValueError(f"{path} has no steps yet (it is written at each checkpoint)")
    table = np.array([rows[k] for k in sorted(rows)], dtype=np.float64)
    return dict(zip(COLUMNS, table.T))


def moving_mean(x: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start), same length as ``x``."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw ``RUN/log.csv`` into ``out`` (default ``RUN/log.png``), atomically; returns the file."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("train plot needs matplotlib: pip install matplotlib "
                         "(or pip install -r requirements-dev.txt)") from None
    log = read_log(run)
    dest = Path(out) if out is not None else Path(run) / "log.png"
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(7, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1, 1]})
    a.plot(log["step"], log["loss"], color="0.75", lw=0.6, label="loss")
    a.plot(log["step"], moving_mean(log["loss"]), color="C0", lw=1.5, label=f"mean of {SMOOTH} steps")
    if (log["loss"] > 0).all():
        a.set_yscale("log")
    a.set_ylabel("loss")
    a.legend(loc="upper right")
    a.set_title(f"{Path(run).resolve().name}: {int(log['step'][-1])} steps")
    b.plot(log["step"], log["lr"], color="C1")
    b.set_ylabel("learning rate")
    c.plot(log["step"], moving_mean(log["images_per_s"]), color="C2")
    c.set_ylabel("images/s")
    c.set_xlabel("step")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return dest
