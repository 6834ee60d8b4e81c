"""Progress reporting: the callback type request functions take, and its adapter for the samplers."""
from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], description)


def _progress_callback(progress: Progress | None, total_label: str) -> Callable[[dict], None] | None:
    if progress is None:
        return None

    def cb(d: dict) -> None:
        progress((d["i"] + 1) / d["n"], f"{total_label} {d['i'] + 1}/{d['n']} (sigma {d['sigma']:.3g})")
    cb.needs_denoised = False  # type: ignore[attr-defined]  # progress only: graphed loops may run
    return cb
