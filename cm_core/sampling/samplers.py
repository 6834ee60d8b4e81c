"""Samplers as plain functions over tensors (paper Algorithm 1, and Heun for EDM teachers).

Every sampler clamps each denoiser output to [-1, 1] (the original's ``clip_denoised``) and
returns a tensor in [-1, 1]. Device and dtype come from ``x_T``. Randomness comes only from the
``generator`` argument: one ``torch.Generator`` for the batch (the original's drawing order) or a
list with one per image, which makes each image independent of the batch it is in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.denoiser import SIGMA_MAX, DenoiseFn, Rng, noise_like
from ..models.messages import old_keywords
from .loop import Callback, clamped_denoise
from .runner import edit_loop, graphable, run_graphed, run_loop
from .schedule import karras_sigmas


def onestep(den: DenoiseFn, x_T: torch.Tensor, class_labels: torch.Tensor | None = None,
            sigma_max: float | None = None, dropout_rng: Rng = None,
            callback: Callback | None = None) -> torch.Tensor:
    """One-step generation ``clamp(D(x_T, sigma_max), -1, 1)`` (paper Algorithm 1 with N=1).

    ``x_T``: [B, 3, H, W] Gaussian noise already multiplied by ``sigma_max`` (80). This is
    Algorithm 4's loop over the two levels (sigma_max, sigma_min), whose one step adds no noise,
    so on a CUDA-graphed fast denoiser it is one graph replay like the multistep sampler.
    """
    smax = sigma_max if sigma_max is not None else den.sigma_max
    smin = den.sigma_min
    return run_loop(den, x_T, [smax, smin], None, None, class_labels, dropout_rng=dropout_rng,
                    callback=callback).clamp(-1, 1)


@old_keywords(steps="grid_size")
def multistep(den: DenoiseFn, x_T: torch.Tensor, ts: Sequence[int], grid_size: int,
              generator: Rng, class_labels: torch.Tensor | None = None,
              dropout_rng: Rng = None, callback: Callback | None = None) -> torch.Tensor:
    """Multistep consistency sampling (paper Algorithm 1), the original ``stochastic_iterative_sampler``.

    ``ts`` are indices into a ``grid_size``-point Karras grid (rho 7, sigma_max -> sigma_min). For each
    consecutive pair (t_i, t_{i+1}): ``x0 = clamp(D(x, t_i))``, then
    ``x = x0 + randn * sqrt(t_{i+1}^2 - sigma_min^2)`` (one draw per step, also for the last
    pair, whose scale is 0). ``len(ts) - 1`` network evaluations; result clamped to [-1, 1].
    This is Algorithm 4's loop (:func:`cm_core.sampling.runner.edit_loop`) with nothing replaced.
    """
    return edit_loop(den, x_T, ts, grid_size, generator, None, class_labels, dropout_rng=dropout_rng,
                     callback=callback).clamp(-1, 1)


@old_keywords(num_steps="heun_steps")
def heun(den: DenoiseFn, x_T: torch.Tensor, heun_steps: int,
         class_labels: torch.Tensor | None = None, dropout_rng: Rng = None,
         callback: Callback | None = None) -> torch.Tensor:
    """Deterministic Heun sampler of the PF ODE for EDM teachers (Karras et al. 2022, Alg. 1).

    ``heun_steps`` Karras sigmas (sigma_max -> sigma_min, rho 7) then 0: Heun steps between them and a
    final Euler step to 0, so ``2 * heun_steps - 1`` evaluations (40 steps = 79). On a
    CUDA-graphed fast denoiser (no dropout; no callback, or a
    :class:`~cm_core.sampling.runner.ProgressOnly` one) the whole loop is one graph replay.
    """
    if heun_steps < 2:
        raise ValueError(f"heun needs heun_steps >= 2, got {heun_steps}")
    sig = karras_sigmas(heun_steps, den.sigma_min, den.sigma_max)
    if not graphable(den, None, callback, dropout_rng):
        return _heun_steps(den, x_T, sig, class_labels, dropout_rng, callback).clamp(-1, 1)
    out = run_graphed(den, ("heun", tuple(sig)), lambda x, labels: _heun_steps(den, x, sig, labels, None, None),
                      x_T, class_labels, callback=callback, sigmas=sig[:-1])
    return out.clamp(-1, 1)


def _heun_steps(den: DenoiseFn, x: torch.Tensor, sig: Sequence[float], class_labels: torch.Tensor | None,
                dropout_rng: Rng, callback: Callback | None) -> torch.Tensor:
    """Heun's loop over ``sig`` (ending in 0); returns the final ``x``, not clamped."""
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        x0 = clamped_denoise(den, x, s, class_labels, dropout_rng)
        d = (x - x0) / s
        if s_next == 0:
            x = x + d * (s_next - s)
        else:
            x2 = x + d * (s_next - s)
            d2 = (x2 - clamped_denoise(den, x2, s_next, class_labels, dropout_rng)) / s_next
            x = x + (d + d2) / 2 * (s_next - s)
        if callback is not None:
            callback({"i": i, "n": len(sig) - 1, "sigma": s, "denoised": x0})
    return x


_DROPOUT_STREAM = 0x5DEECE66D  # offsets dropout seeds away from the noise seeds


def make_generators(seed: int, n: int, device: str | torch.device = "cpu",
                    stream: str = "noise") -> list[torch.Generator]:
    """Per-image generators: image ``i`` uses seed ``seed + i`` (``stream="noise"``), so its result
    does not depend on the batch size. ``stream="dropout"`` gives an independent stream for
    Monte-Carlo dropout masks derived from the same per-image seeds."""
    if stream not in ("noise", "dropout"):
        raise ValueError(f"stream must be 'noise' or 'dropout', got {stream!r}")
    off = 0 if stream == "noise" else _DROPOUT_STREAM
    return [torch.Generator(device=device).manual_seed((seed + i + off) % 2 ** 63) for i in range(n)]


def initial_noise(shape: Sequence[int], generator: Rng, sigma_max: float = SIGMA_MAX,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x_T = sigma_max * z``, z ~ N(0, I) of ``shape`` [B, C, H, W] from ``generator`` (see noise_like)."""
    ref = torch.empty(tuple(shape), device=device, dtype=dtype)
    return noise_like(ref, generator) * sigma_max
