"""Progress reporting: the callback type request functions take, and its adapter for the samplers."""
from __future__ import annotations

from collections.abc import Callable

from ..sampling.runner import ProgressOnly

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], description)


class Cancelled(Exception):
    """The client of a request left (cancelled it, or its connection dropped).

    A :data:`Progress` callback raises it; request functions call their progress between network
    evaluations, so the work stops within one evaluation and its compute slot is free at once.
    Not a user error: nobody is left to read a message."""


def _progress_callback(progress: Progress | None, total_label: str) -> Callable[[dict], None] | None:
    if progress is None:
        return None

    def cb(d: dict) -> None:
        progress((d["i"] + 1) / d["n"], f"{total_label} {d['i'] + 1}/{d['n']} (sigma {d['sigma']:.3g})")
    return ProgressOnly(cb)  # it never reads "denoised": a loop may run as one CUDA graph
