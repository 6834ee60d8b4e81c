"""The one Algorithm-4 loop (Song et al. 2023) that every sampler and editor runs.

``x0 = clamp(D(x, t_i)); x0 = replace(x0); x = x0 + z_i sqrt(t_{i+1}^2 - sigma_min^2)``: with no
replacement it is multistep sampling (and one-step over (sigma_max, sigma_min)); the editors of
:mod:`cm_core.editing` pass a :class:`Replacement` that puts the known part of the reference back.
A plain function over tensors that knows nothing of acceleration: :mod:`cm_core.sampling.runner`
runs it, as one CUDA graph where the denoiser can.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..models.denoiser import DenoiseFn, Rng, noise_like, sigma_noise_scale

Callback = Callable[[dict], None]
ReplaceFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- the shared loop
def clamped_denoise(den: DenoiseFn, x: torch.Tensor, sigma: float, class_labels: torch.Tensor | None,
       dropout_rng: Rng) -> torch.Tensor:
    """One denoiser evaluation at scalar ``sigma``, clamped to [-1, 1] (the original's clip_denoised)."""
    s = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
    kw = {"dropout_rng": dropout_rng} if dropout_rng is not None else {}
    return den(x, s, class_labels, **kw).clamp(-1, 1)


def sigma_range(den: DenoiseFn) -> tuple[float, float]:
    """(sigma_min, sigma_max) of ``den``'s model."""
    return float(den.sigma_min), float(den.sigma_max)


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


def sigma_loop(den: DenoiseFn, x: torch.Tensor, sigmas: Sequence[float], generator: Rng,
               replace: ReplaceFn | None = None, class_labels: torch.Tensor | None = None, *,
               dropout_rng: Rng = None, callback: Callback | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 4 over explicit noise levels ``sigmas`` (t_0 > t_1 > ... >= sigma_min).

    ``x``: [B, C, H, W] at noise level ``sigmas[0]``. ``len(sigmas) - 1`` evaluations; after each,
    ``replace`` (if any) puts the known part back and one noise draw of ``x``'s shape (from
    ``generator``, or ``noise[i]`` of a pre-drawn [len(sigmas) - 1, B, C, H, W] tensor, see
    :func:`predraw_noise`) scaled by sqrt(t_{i+1}^2 - sigma_min^2) is added. With
    ``generator=None`` a zero-scale step draws nothing. Returns the final ``x``, NOT clamped.
    ``callback`` gets {"i", "n", "sigma", "denoised"} where "denoised" is x0 after replacement.
    """
    check_levels(x, sigmas, noise)

    def draw(i: int, x0: torch.Tensor, scale: float) -> torch.Tensor | None:
        return noise[i] if noise is not None else _step_noise(x0, generator, scale)
    return _loop(den, x, sigmas, replace, class_labels, dropout_rng, callback, draw)


def check_levels(x: torch.Tensor, sigmas: Sequence[float], noise: torch.Tensor | None) -> None:
    """At least two noise levels, and pre-drawn noise (if any) of shape [len(sigmas) - 1, *x.shape]."""
    n = len(sigmas) - 1
    if n < 1:
        raise ValueError(f"need at least two noise levels, got {list(sigmas)}")
    if noise is not None and noise.shape != (n, *x.shape):
        raise ValueError(f"pre-drawn noise must be [{n}, {', '.join(map(str, x.shape))}], "
                         f"got {tuple(noise.shape)}")


def predraw_noise(den: DenoiseFn, x: torch.Tensor, sigmas: Sequence[float], generator: Rng) -> torch.Tensor:
    """Every step's standard noise for :func:`sigma_loop` over ``sigmas``, [len(sigmas) - 1, *x.shape],
    drawn from ``generator`` in the order the loop draws it (zeros where it would draw nothing),
    so that the loop gives the same result with it as with ``generator``."""
    smin, _ = sigma_range(den)
    draws = [_step_noise(x, generator, sigma_noise_scale(float(s), smin)) for s in sigmas[1:]]
    return torch.stack([torch.zeros_like(x) if z is None else z for z in draws])
