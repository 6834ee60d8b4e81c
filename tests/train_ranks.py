"""Run under ``torchrun``: train each method named on the command line, in turn, on the tiny
configuration of ``test_train_scale.py`` into ``OUT/<method>`` (one launch, one import of torch
and cm_core per rank, for every method compared across world sizes).

Usage: ``torchrun --nproc_per_node 2 tests/train_ranks.py OUT STEPS METHOD [METHOD ...]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from test_train_scale import TINY

from cm_core.train import TrainConfig, run_training


def main(out: str, steps: str, *methods: str) -> None:
    for method in methods:
        run_training(TrainConfig(method=method, out=str(Path(out) / method), steps=int(steps), **TINY),
                     resume=True, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
