"""Noise-level schedules: the Karras et al. (2022) grid and the consistency-model step indices.

All sigma arithmetic on the grid is done in Python floats (float64), as the original
``stochastic_iterative_sampler`` does with NumPy, so that step sigmas match it exactly.
"""
from __future__ import annotations

from collections.abc import Sequence


from ..models.denoiser import SIGMA_MAX, SIGMA_MIN
from ..models.messages import check_length, old_keywords, quote

MAX_TS_CHARS = 4000  # a ts text of 201 three-digit indices is about 800 characters

RHO = 7.0


def karras_sigma(index: float, grid_size: int, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, rho: float = RHO) -> float:
    """Sigma of point ``index`` on a ``grid_size``-point Karras grid (EDM eq. 5), as a float.

    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` with
    N = ``grid_size``; index 0 is ``sigma_max`` and index N-1 is ``sigma_min``.
    """
    if grid_size < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, got grid_size={grid_size}")
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (hi + index / (grid_size - 1) * (lo - hi)) ** rho


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO, append_zero: bool = True) -> list[float]:
    """The ``n`` Karras sigmas from ``sigma_max`` down to ``sigma_min``, then 0 if ``append_zero``."""
    sig = [karras_sigma(i, n, sigma_min, sigma_max, rho) for i in range(n)]
    return sig + [0.0] if append_zero else sig


@old_keywords(steps="grid_size")
def ts_to_sigmas(ts: Sequence[int], grid_size: int, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, rho: float = RHO) -> list[float]:
    """Map indices ``ts`` on a ``grid_size``-point grid to sigmas, clipped to [sigma_min, sigma_max]."""
    validate_ts(ts, grid_size)
    return [min(max(karras_sigma(t, grid_size, sigma_min, sigma_max, rho), sigma_min), sigma_max)
            for t in ts]


@old_keywords(steps="grid_size")
def validate_ts(ts: Sequence[int], grid_size: int) -> None:
    """Check that ``ts`` are at least two strictly increasing integer indices in ``[0, grid_size-1]``."""
    if grid_size < 2:
        raise ValueError(f"a grid needs at least 2 points, got a {grid_size}-point grid")
    ts = list(ts)
    if len(ts) < 2:
        raise ValueError(f"ts needs at least two indices (e.g. 0,{grid_size - 1}); got {quote(ts)}")
    if any(int(t) != t for t in ts) or any(t < 0 or t > grid_size - 1 for t in ts):
        raise ValueError(f"ts must be integer indices in [0, {grid_size - 1}] on a {grid_size}-point grid; "
                         f"got {quote(ts)}")
    if any(b <= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"ts must be strictly increasing; got {quote(ts)}")


SIGMAS_PREFIX = "sigmas:"


def is_sigmas(text: object) -> bool:
    """Whether ``text`` gives noise levels directly (``"sigmas: 80, 40, 20"``) rather than indices."""
    return isinstance(text, str) and text.strip().lower().startswith(SIGMAS_PREFIX)


def parse_sigmas(text: str, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> tuple[float, ...]:
    """Noise levels from ``"sigmas: 80, 40, 20, 10, 5"`` (the form k-diffusion style samplers take).

    The listed levels are where the network evaluates, strictly decreasing within
    ``(sigma_min, sigma_max]``; ``sigma_min`` is appended as the final level (no evaluation, no
    noise added), as a ``ts`` list ends on the grid's last index. A trailing ``sigma_min`` in
    the text is accepted and not doubled. Returns all levels: one more than the evaluations.
    """
    check_length("sigmas", text, MAX_TS_CHARS)
    body = text.strip()[len(SIGMAS_PREFIX):]
    try:
        levels = [float(v) for v in body.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError("sigmas must be comma-separated numbers after 'sigmas:', e.g. "
                         f"'sigmas: 80, 40, 20, 10, 5'; got {quote(text)}") from None
    if levels and abs(levels[-1] - sigma_min) <= 1e-9 * sigma_min:
        levels = levels[:-1]
    if not levels:
        raise ValueError(f"sigmas needs at least one noise level above sigma_min ({sigma_min:g}), "
                         "e.g. 'sigmas: 80, 40'")
    if not all(sigma_min < v <= sigma_max for v in levels):  # also refuses nan
        raise ValueError(f"sigmas must lie in ({sigma_min:g}, {sigma_max:g}] for this model; got {quote(text)}")
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"sigmas must be strictly decreasing; got {quote(text)}")
    return (*levels, sigma_min)


def parse_ts(text: str | Sequence[int] | None, grid_size: int) -> tuple[tuple[int, ...] | None, int]:
    """Explicit step indices from text: ``"0,22,39"`` on a ``grid_size``-point grid, or ``"0,106,200/201"``.

    Returns ``(ts, grid)``; ``(None, grid_size)`` for empty input. A sequence of ints passes through.
    Raises ``ValueError`` naming the expected form, and the :func:`validate_ts` errors.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None, grid_size
    check_length("ts", text, MAX_TS_CHARS)
    if is_sigmas(text):
        raise ValueError("noise levels ('sigmas: ...') are taken by generation only; here give grid "
                         "indices, e.g. 0,22,39")
    if not isinstance(text, str):
        ts = tuple(int(t) for t in text)
    else:
        body, _, g = text.replace(" ", "").partition("/")
        try:
            ts = tuple(int(t) for t in body.split(",") if t)
            grid_size = int(g) if g else grid_size
        except ValueError:
            raise ValueError("ts must be comma-separated integers like 0,22,39, optionally followed by "
                             f"/N for an N-point grid (e.g. 0,106,200/201); got {quote(text)}") from None
    validate_ts(ts, grid_size)
    return ts, grid_size


@old_keywords(num_steps="num_evals", steps="grid_size")
def pick_ts(num_evals: int, grid_size: int, default_ts: Sequence[int] = ()) -> list[int]:
    """Indices for ``num_evals`` network evaluations on a ``grid_size``-point grid.

    The original sampler evaluates the network at every index but the last (whose sigma is
    sigma_min and adds no noise), so ``num_evals`` evaluations need ``num_evals + 1`` indices.
    The registry's tuned ``default_ts`` is used when it has the right length; otherwise the
    indices are spread evenly from 0 to ``grid_size - 1``.
    """
    if num_evals < 1:
        raise ValueError(f"num_evals must be >= 1, got {num_evals}")
    if num_evals > grid_size - 1:
        raise ValueError(f"at most {grid_size - 1} evaluations on a {grid_size}-point grid, got {num_evals}")
    if len(default_ts) == num_evals + 1:
        return [int(t) for t in default_ts]
    return [round(i * (grid_size - 1) / num_evals) for i in range(num_evals + 1)]
