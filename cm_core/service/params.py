"""Parameter validation: integers, step indices ``ts``, and a generate request into a :class:`Plan`.

Everything raises ``ValueError`` with a sentence a user can act on (the app shows
:data:`USER_ERRORS` as messages).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..models.checkpoints import CheckpointError
from ..models.messages import quote
from ..models.registry import DEFAULT_MODEL, ModelSpec, get_spec
from ..sampling import schedule
from ..sampling.generate import SampleSettings
from .classes import parse_class
from .settings import MAX_HEUN_STEPS, MAX_SEED, MAX_TS_STEPS, max_batch

USER_ERRORS = (ValueError, CheckpointError)  # UnknownModelError is a ValueError


def parse_ts(text: str | Sequence[int] | None, grid: int) -> tuple[tuple[int, ...] | None, int]:
    """:func:`cm_core.sampling.schedule.parse_ts` with the per-request bound on network evaluations."""
    ts, grid = schedule.parse_ts(text, grid)
    if ts is not None and len(ts) - 1 > MAX_TS_STEPS:  # a long custom grid could run for hours
        raise ValueError(f"ts has {len(ts) - 1} steps; at most {MAX_TS_STEPS} network evaluations "
                         "per image are allowed")
    return ts, grid


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {quote(value)}") from None
    if f != f or f in (float("inf"), float("-inf")):  # int() of these raises an unclear error
        raise ValueError(f"{name} must be a finite number, got {quote(value)}")
    if f != int(f):
        raise ValueError(f"{name} must be an integer, got {value}")
    if not lo <= int(f) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {int(f)}")
    return int(f)


def _number(name: str, value: Any, lo: float, hi: float, unit: str = "") -> float:
    """A number in [lo, hi] (``unit`` follows it in messages, e.g. " grey levels")."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number{unit and ' of' + unit}, got {quote(value)}") from None
    if not lo <= f <= hi:
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}]{unit}, got {f:g}")
    return f


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _flag(name: str, value: Any) -> bool:
    """A yes/no parameter: a bool, 0/1, or its text (``"True"``, ``"false"``, ``"1"``...), as API
    clients send it; anything else is a ``ValueError`` (``bool("False")`` would be True)."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{name} must be true or false, got {quote(value)}")


@dataclass(frozen=True)
class GenerateRequest:
    """One generate call: ``batch_size`` images with per-image seeds ``seed, seed+1, ...``.

    ``steps``: consistency-model evaluations (1 = one-step); ``ts``: explicit indices for experts
    (overrides ``steps``); ``heun_steps``: Heun steps for EDM teachers (``2n-1`` evaluations);
    ``class_label``: index, name or ``"random"``; ``None`` values take the registry defaults.
    """

    model: str = DEFAULT_MODEL
    steps: int = 1
    ts: str | None = None
    seed: int = 0
    batch_size: int = 4
    dropout: float = 0.0
    class_label: Any = None
    heun_steps: int | None = None


@dataclass(frozen=True)
class Plan:
    spec: ModelSpec
    settings: SampleSettings
    seeds: tuple[int, ...]
    class_label: int | None
    evaluations: int
    description: str


def _dropout(value: Any) -> float:
    try:
        dropout = float(value or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"dropout must be a number in [0, 0.9], got {quote(value)}") from None
    if not 0.0 <= dropout <= 0.9:
        raise ValueError(f"dropout must be in [0, 0.9], got {dropout}")
    return dropout


def _sampling(spec: ModelSpec, req: GenerateRequest, dropout: float) -> tuple[SampleSettings, str]:
    """(settings, description) of a request's sampler: Heun for EDM teachers; else explicit noise
    levels (``sigmas: ...``), explicit ``ts``, or ``steps``."""
    if spec.kind == "edm":
        hs = _int("Heun steps", req.heun_steps if req.heun_steps not in (None, "") else spec.heun_steps,
                  2, MAX_HEUN_STEPS)
        return SampleSettings(heun_steps=hs, dropout=dropout), \
            f"Heun sampler, {hs} steps = {2 * hs - 1} network evaluations"
    if schedule.is_sigmas(req.ts):
        sig = schedule.parse_sigmas(str(req.ts), spec.sigma_min, spec.sigma_max)
        if len(sig) - 1 > MAX_TS_STEPS:
            raise ValueError(f"sigmas has {len(sig) - 1} levels; at most {MAX_TS_STEPS} network evaluations "
                             "per image are allowed")
        return SampleSettings(sigmas=sig, dropout=dropout), \
            f"multistep over sigmas {', '.join(f'{v:g}' for v in sig[:-1])}"
    ts, grid = parse_ts(req.ts, spec.grid_size)
    if ts is not None:
        return SampleSettings(ts=ts, grid_size=grid, dropout=dropout), \
            f"multistep, ts {','.join(map(str, ts))} on a {grid}-point grid"
    steps = _int("steps", req.steps if req.steps not in (None, "") else 1, 1, spec.grid_size - 1)
    settings = SampleSettings(num_evals=steps, dropout=dropout)
    resolved = settings.resolved_ts(spec)
    return settings, ("one-step generation" if resolved is None else
                      f"{steps}-step, ts {','.join(map(str, resolved[0]))} on a {resolved[1]}-point grid")


def plan(req: GenerateRequest) -> Plan:
    """Validate a request into what to run; ``ValueError`` with a clear message otherwise."""
    spec = get_spec(str(req.model))
    n = _int("batch size", req.batch_size, 1, max_batch())
    seed = _int("seed", req.seed, 0, MAX_SEED - n)
    dropout = _dropout(req.dropout)
    label = parse_class(spec, req.class_label)
    settings, desc = _sampling(spec, req, dropout)
    return Plan(spec, settings, tuple(range(seed, seed + n)), label, settings.evaluations(spec), desc)
