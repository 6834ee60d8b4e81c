"""The one Algorithm-4 loop (Song et al. 2023) that every sampler and editor runs.

``x0 = clamp(D(x, t_i)); x0 = replace(x0); x = x0 + z_i sqrt(t_{i+1}^2 - sigma_min^2)``: with no
replacement it is multistep sampling (and one-step over (sigma_max, sigma_min)); the editors of
:mod:`cm_core.editing` pass a :class:`Replacement` that puts the known part of the reference back.
``graphable`` and ``run_graphed_loop`` run a whole loop as one CUDA graph on the fast path.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.denoiser import Rng, noise_like, sigma_noise_scale
from .schedule import ts_to_sigmas

Callback = Callable[[dict], None]
DenoiseFn = Callable[..., torch.Tensor]
ReplaceFn = Callable[[torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- the shared loop
def clamped_denoise(den: DenoiseFn, x: torch.Tensor, sigma: float, class_labels: torch.Tensor | None,
       dropout_rng: Rng) -> torch.Tensor:
    """One denoiser evaluation at scalar ``sigma``, clamped to [-1, 1] (the original's clip_denoised)."""
    s = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
    kw = {"dropout_rng": dropout_rng} if dropout_rng is not None else {}
    return den(x, s, class_labels, **kw).clamp(-1, 1)


def sigma_range(den: Any) -> tuple[float, float]:
    return float(getattr(den, "sigma_min", 0.002)), float(getattr(den, "sigma_max", 80.0))


@dataclass(frozen=True)
class Replacement:
    """Algorithm 4's replacement ``x0 -> fn(x0, *tensors)`` with its tensors explicit, so that a
    CUDA graph of the loop takes them as inputs (a closure's tensors would be frozen into the
    graph). ``tag`` names ``fn`` and every constant it uses (it keys the graph): a constant
    tensor held by ``fn``'s closure (a colour or patch basis) is frozen into the first capture,
    and kept alive with it, so it must be the same for every call with that tag."""

    fn: Callable[..., torch.Tensor]
    tensors: tuple[torch.Tensor, ...]
    tag: str

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return self.fn(x0, *self.tensors)


def graphable(den: Any, replace: Any, callback: Callback | None, noise: Any, dropout_rng: Rng) -> bool:
    """Whether the loop can run as one CUDA graph: a graph-capable fast denoiser, no per-step
    host work (a callback that needs x0, a noise function, Monte-Carlo dropout)."""
    return (bool(getattr(den, "graphs_active", False)) and hasattr(den, "run_graphed")
            and (replace is None or isinstance(replace, Replacement))
            and (callback is None or not getattr(callback, "needs_denoised", True))
            and not callable(noise)
            and (dropout_rng is None or float(getattr(den, "dropout", 0.0)) == 0.0))


def _step_noise(x: torch.Tensor, generator: Rng, scale: float) -> torch.Tensor | None:
    """One step's standard noise of ``x``'s shape from ``generator``; None (nothing drawn, so
    no generator state used) when there is no generator and the step adds no noise."""
    return None if generator is None and scale == 0.0 else noise_like(x, generator)


def _loop(den: DenoiseFn, x: torch.Tensor, sigmas: Sequence[float], replace: ReplaceFn | None,
          class_labels: torch.Tensor | None, dropout_rng: Rng, callback: Callback | None,
          draw: Callable[[int, torch.Tensor, float], torch.Tensor | None]) -> torch.Tensor:
    """The loop itself; ``draw(i, x0, scale)`` gives step i's standard noise (None: add none)."""
    smin, _ = sigma_range(den)
    n = len(sigmas) - 1
    for i in range(n):
        x0 = clamped_denoise(den, x, float(sigmas[i]), class_labels, dropout_rng)
        if replace is not None:
            x0 = replace(x0)
        scale = sigma_noise_scale(float(sigmas[i + 1]), smin)
        z = draw(i, x0, scale)
        x = x0 if z is None else x0 + z * scale
        if callback is not None:
            callback({"i": i, "n": n, "sigma": float(sigmas[i]), "denoised": x0})
    return x


def _graphed_loop(den: Any, x: torch.Tensor, sigmas: Sequence[float], generator: Rng,
                  replace: Replacement | None, class_labels: Any, callback: Callback | None,
                  noise: torch.Tensor | None) -> torch.Tensor:
    """:func:`sigma_loop` as one CUDA graph replay (``den.run_graphed``): the noise of every
    step is drawn up front in the un-graphed loop's order, so both give the same result."""
    smin, _ = sigma_range(den)
    n, sig = len(sigmas) - 1, tuple(float(s) for s in sigmas)
    if noise is None:
        draws = [_step_noise(x, generator, sigma_noise_scale(s, smin)) for s in sig[1:]]
        noise = torch.stack([torch.zeros_like(x) if z is None else z for z in draws])
    rt = replace.tensors if replace is not None else ()
    fn, tag = (replace.fn, replace.tag) if replace is not None else (None, None)

    def body(x: torch.Tensor, labels: torch.Tensor | None, noises: torch.Tensor,
             *tensors: torch.Tensor) -> torch.Tensor:
        rep = Replacement(fn, tensors, tag) if fn is not None else None
        return _loop(den, x, sig, rep, labels, None, None, lambda i, x0, sc: noises[i])
    return run_graphed_loop(den, ("sigma_loop", tag, sig), body, x, class_labels,
                            noise.to(device=x.device, dtype=x.dtype), *rt, callback=callback,
                            sigmas=sig[:n])


def run_graphed_loop(den: Any, tag: tuple, body: Callable[..., torch.Tensor], x: torch.Tensor,
                     class_labels: Any, *tensors: torch.Tensor, callback: Callback | None,
                     sigmas: Sequence[float]) -> torch.Tensor:
    """``body(x, labels, *tensors)``, a device-only loop, as one graph replay on ``den``
    (:meth:`cm_core.accel.fast.FastDenoiser.run_graphed`). The labels are checked and moved to the
    device before capture; the graph key is ``tag`` plus the shapes, dtype and whether there are
    labels. A progress-only callback (``needs_denoised = False``) then gets each step of
    ``sigmas`` (the levels evaluated), with "denoised" None."""
    lab = den.check_labels(class_labels, x.shape[0])
    key = (*tag, tuple(x.shape), x.dtype, lab is None, tuple(t.shape for t in tensors))
    out = den.run_graphed(key, body, x, lab, *tensors)
    if callback is not None:
        for i, s in enumerate(sigmas):
            callback({"i": i, "n": len(sigmas), "sigma": float(s), "denoised": None})
    return out


def sigma_loop(den: DenoiseFn, x: torch.Tensor, sigmas: Sequence[float], generator: Rng,
               replace: ReplaceFn | None = None, class_labels: torch.Tensor | None = None, *,
               dropout_rng: Rng = None, callback: Callback | None = None,
               noise: NoiseFn | torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 4 over explicit noise levels ``sigmas`` (t_0 > t_1 > ... >= sigma_min).

    ``x``: [B, C, H, W] at noise level ``sigmas[0]``. ``len(sigmas) - 1`` evaluations; after each,
    ``replace`` (if any) puts the known part back and one noise draw of ``x``'s shape (from
    ``generator``; or ``noise(i, x0)``; or ``noise[i]`` of a pre-drawn [len(sigmas) - 1, B, C, H, W]
    tensor) scaled by sqrt(t_{i+1}^2 - sigma_min^2) is added. With ``generator=None`` a zero-scale
    step draws nothing. Returns the final ``x``, NOT clamped.
    ``callback`` gets {"i", "n", "sigma", "denoised"} where "denoised" is x0 after replacement.

    On a :class:`cm_core.accel.fast.FastDenoiser` with CUDA graphs, the whole loop is one graph replay
    when ``replace`` is None or a :class:`Replacement`, ``noise`` is not a function, there is no
    dropout, and ``callback`` is None or marked ``needs_denoised = False`` (a progress bar; it
    is then called after the replay with "denoised" None).
    """
    n = len(sigmas) - 1
    if n < 1:
        raise ValueError(f"need at least two noise levels, got {list(sigmas)}")
    if isinstance(noise, torch.Tensor) and noise.shape != (n, *x.shape):
        raise ValueError(f"pre-drawn noise must be [{n}, {', '.join(map(str, x.shape))}], "
                         f"got {tuple(noise.shape)}")
    if graphable(den, replace, callback, noise, dropout_rng):
        return _graphed_loop(den, x, sigmas, generator, replace, class_labels, callback, noise)

    def draw(i: int, x0: torch.Tensor, scale: float) -> torch.Tensor | None:
        if isinstance(noise, torch.Tensor):
            return noise[i]
        if noise is not None:
            return noise(i, x0)
        return _step_noise(x0, generator, scale)
    return _loop(den, x, sigmas, replace, class_labels, dropout_rng, callback, draw)


def edit_loop(den: DenoiseFn, x: torch.Tensor, ts: Sequence[int], steps: int, generator: Rng,
              replace: ReplaceFn | None = None, class_labels: torch.Tensor | None = None, *,
              dropout_rng: Rng = None, callback: Callback | None = None,
              noise: NoiseFn | torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 4 with grid indices ``ts`` on a ``steps``-point Karras grid (see module doc).

    With ``replace=None`` this is exactly :func:`cm_core.sampling.multistep` before its final clamp.
    Returns the final ``x`` [B, C, H, W], not clamped (callers clamp).
    """
    smin, smax = sigma_range(den)
    sig = ts_to_sigmas(ts, steps, sigma_min=smin, sigma_max=smax)
    return sigma_loop(den, x, sig, generator, replace, class_labels, dropout_rng=dropout_rng,
                      callback=callback, noise=noise)
