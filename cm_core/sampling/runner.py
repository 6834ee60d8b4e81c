"""Running Algorithm 4's loop: as one CUDA graph replay where the denoiser can, else the plain loop.

:func:`cm_core.sampling.loop.sigma_loop` is a plain function that knows nothing of acceleration.
The samplers and editors call :func:`run_loop` (or :func:`edit_loop`, with grid indices), which
wraps the whole loop from outside: on a :class:`~cm_core.accel.fast.FastDenoiser` with CUDA graphs
active it draws every step's noise up front (:func:`~cm_core.sampling.loop.predraw_noise`, in
the order the plain loop draws it, so both give the same result) and runs the loop, with the image,
labels, noise and the replacement's tensors as graph inputs, through
:meth:`~cm_core.accel.fast.FastDenoiser.run_graphed`. Elsewhere it is the plain loop.

A loop runs as one graph only when nothing in it needs the host between steps: the replacement
is a :class:`~cm_core.sampling.loop.Replacement` (or none), there is no Monte-Carlo dropout, and
the callback is none or a :class:`ProgressOnly` one, called after the replay with "denoised" None.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..accel.fast import FastDenoiser
from ..models.denoiser import Rng
from ..models.messages import old_keywords
from ..models.network import dropout_rate
from .loop import (
    Callback,
    DenoiseFn,
    Replacement,
    ReplaceFn,
    check_levels,
    predraw_noise,
    sigma_loop,
    sigma_range,
)
from .schedule import ts_to_sigmas

__all__ = ["ProgressOnly", "edit_loop", "graphable", "run_graphed", "run_loop"]


class ProgressOnly:
    """A callback that reports progress only and never reads "denoised": a loop run as one CUDA
    graph calls it after the replay, once per step, with "denoised" None."""

    def __init__(self, fn: Callable[[dict], None]) -> None:
        self.fn = fn

    def __call__(self, d: dict) -> None:
        self.fn(d)


def graphable(den: Any, replace: Any, callback: Callback | None, dropout_rng: Rng) -> bool:
    """Whether a loop on ``den`` can run as one CUDA graph (see the module doc)."""
    return (isinstance(den, FastDenoiser) and den.graphs_active
            and (replace is None or isinstance(replace, Replacement))
            and (callback is None or isinstance(callback, ProgressOnly))
            and dropout_rate(dropout_rng, den.dropout) == 0.0)


def run_graphed(den: FastDenoiser, tag: tuple, body: Callable[..., torch.Tensor], x: torch.Tensor,
                class_labels: Any, *tensors: torch.Tensor, callback: Callback | None,
                sigmas: Sequence[float]) -> torch.Tensor:
    """``body(x, labels, *tensors)``, a device-only loop, as one graph replay on ``den``. The
    labels are checked and moved to the device before capture; the graph key is ``tag`` plus the
    shapes, dtype and whether there are labels. The callback then gets each step of ``sigmas``
    (the levels evaluated), with "denoised" None."""
    lab = den.check_labels(class_labels, x.shape[0])
    key = (*tag, tuple(x.shape), x.dtype, lab is None, tuple(t.shape for t in tensors))
    out = den.run_graphed(key, body, x, lab, *tensors)
    if callback is not None:
        for i, s in enumerate(sigmas):
            callback({"i": i, "n": len(sigmas), "sigma": float(s), "denoised": None})
    return out


def run_loop(den: DenoiseFn, x: torch.Tensor, sigmas: Sequence[float], generator: Rng,
             replace: ReplaceFn | None = None, class_labels: torch.Tensor | None = None, *,
             dropout_rng: Rng = None, callback: Callback | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`~cm_core.sampling.loop.sigma_loop` (same arguments, same result), as one CUDA graph
    replay when :func:`graphable`."""
    if not graphable(den, replace, callback, dropout_rng):
        return sigma_loop(den, x, sigmas, generator, replace, class_labels, dropout_rng=dropout_rng,
                          callback=callback, noise=noise)
    check_levels(x, sigmas, noise)  # here, not inside the capture
    sig = tuple(float(s) for s in sigmas)
    noise = predraw_noise(den, x, sig, generator) if noise is None else noise
    fn, tag = (replace.fn, replace.tag) if isinstance(replace, Replacement) else (None, None)

    def body(x: torch.Tensor, labels: torch.Tensor | None, noises: torch.Tensor,
             *tensors: torch.Tensor) -> torch.Tensor:
        rep = Replacement(fn, tensors, tag) if fn is not None else None
        return sigma_loop(den, x, sig, None, rep, labels, noise=noises)
    rt = replace.tensors if isinstance(replace, Replacement) else ()
    return run_graphed(den, ("sigma_loop", tag, sig), body, x, class_labels,  # type: ignore[arg-type]
                       noise.to(device=x.device, dtype=x.dtype), *rt, callback=callback, sigmas=sig[:-1])


@old_keywords(steps="grid_size")
def edit_loop(den: DenoiseFn, x: torch.Tensor, ts: Sequence[int], grid_size: int, generator: Rng,
              replace: ReplaceFn | None = None, class_labels: torch.Tensor | None = None, *,
              dropout_rng: Rng = None, callback: Callback | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 4 with grid indices ``ts`` on a ``grid_size``-point Karras grid (:func:`run_loop`).

    With ``replace=None`` this is exactly :func:`cm_core.sampling.multistep` before its final clamp.
    Returns the final ``x`` [B, C, H, W], not clamped (callers clamp).
    """
    smin, smax = sigma_range(den)
    sig = ts_to_sigmas(ts, grid_size, sigma_min=smin, sigma_max=smax)
    return run_loop(den, x, sig, generator, replace, class_labels, dropout_rng=dropout_rng,
                    callback=callback, noise=noise)
