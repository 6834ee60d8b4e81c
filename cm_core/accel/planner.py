"""Measure, then choose: time the fast path's candidate variants on this machine and keep the
fastest one that passes the quality check (the idea of FFTW's plans and ``cudnn.benchmark``).

No CPU flag tells whether a variant pays: bf16 runs at 2.6-2.8x fp32 on Zen 4/5 cores and at 0.6x
on a Sapphire Rapids VM that shows the same ``avx512_bf16`` flag. So for one (network, device,
batch bucket) :func:`make_plan` builds each :class:`Candidate` (a step function with the
Denoiser's step contract ``fn(x, sigma, labels) -> denoised``, f32 in and out), runs it once on
the fixed input of :mod:`cm_core.accel.verify` against the exact fp32 output, times the passing
ones in interleaved rounds against the exact one (so a machine that slows down slows every
candidate alike), keeps each one's fastest run, and chooses by :func:`choose`: the exact path unless a passing candidate is
clearly faster (by ``margin``, 3%). A candidate that raises (a compile error, a failed graph
capture) or fails the check simply loses. The :class:`Plan` says what each one measured and why
the winner won.

Planning costs a few network calls per candidate, so it is kept short: a candidate whose first run
takes ``slow`` (1.5) times the exact path's cannot win and is stopped there by a :class:`Deadline`
(its network checks it before every module), every first run also counts as one timing sample,
and the interleaved rounds stop at ``budget_s``.

Plans persist in a :class:`PlanCache` (one JSON file, written atomically) under :func:`plan_key`:
the machine (CPU model and flags, or GPU name and capability), torch and oneDNN / cuDNN versions,
the thread count, a hash of the network's architecture and the bucket, so a restart reuses them
and any change of those measures again. ``$CM_PLAN`` (:func:`plan_mode`): ``measure`` (default:
use the cache, measure what is missing), ``cached`` (use the cache, never measure), ``off`` (the
fixed plan of :func:`cm_core.accel.cpu.cpu_plan`).
"""
from __future__ import annotations

import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import torch

from .compile_cache import StepFn
from .verify import MAX_ABS, MIN_PSNR, compare

__all__ = ["MARGIN", "PLAN_MODES", "SLOW", "Activity", "Candidate", "Deadline", "Plan", "TooSlow", "Trial",
           "choose", "interleaved_times", "make_plan", "out_of_the_race", "plan_mode"]

log = logging.getLogger("cm_core.accel.planner")

PLAN_MODES = ("measure", "cached", "off")
MARGIN = 0.03  # a candidate must be this much faster than the exact path to be chosen
SLOW = 1.5  # a candidate this many times slower than the exact path on its first run is not timed
Inputs = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def plan_mode(value: str | None = None) -> str:
    """``value`` or ``$CM_PLAN`` (default ``measure``), checked against :data:`PLAN_MODES`."""
    mode = (value if value is not None else os.environ.get("CM_PLAN", "measure")).strip().lower()
    if mode not in PLAN_MODES:
        raise ValueError(f"CM_PLAN must be one of {', '.join(PLAN_MODES)}, got {mode[:40]!r}")
    return mode


class TooSlow(RuntimeError):
    """Raised inside a candidate's run when its :class:`Deadline` has passed."""


class Deadline:
    """A time limit that a running network checks before each of its modules.

    :meth:`watch` adds a forward pre-hook to every module of a network (an eager candidate's own
    copy); inside ``with deadline.within(seconds):`` a module that starts after the limit raises
    :class:`TooSlow`, so a candidate far slower than the exact path costs at most about the
    limit, not its whole run (emulated bf16: 7-9x the exact path). Outside ``within`` the hooks
    only compare two floats."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._at = math.inf

    def check(self) -> None:
        if self._at != math.inf and self.clock() > self._at:
            raise TooSlow("stopped at its time limit")

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        self._at = self.clock() + seconds
        try:
            yield
        finally:
            self._at = math.inf

    def watch(self, module: torch.nn.Module) -> torch.nn.Module:
        """Make every submodule of ``module`` check this deadline before it runs."""
        for m in module.modules():
            m.register_forward_pre_hook(lambda *_: self.check())
        return module


class Activity:
    """The serving calls that run beside the planner: ``with activity:`` around each one.

    The planner times a run only while no serving call runs, and runs it again (up to ``tries``
    times in all) when one started meanwhile: on a machine of 2 cores a request served during a
    timed run would slow it by half, and the plan, stored for good, would be wrong. Serving never
    waits for the planner; the planner waits (at most ``max_wait_s`` a run) for serving."""

    def __init__(self, max_wait_s: float = 30.0, tries: int = 3) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.started = 0
        self.max_wait_s, self.tries = max_wait_s, tries

    def __enter__(self) -> Activity:
        with self._lock:
            self.active += 1
            self.started += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.active -= 1

    def quiet_mark(self) -> int:
        """After waiting (bounded) until no serving call runs: the count of calls started."""
        t_end = time.monotonic() + self.max_wait_s
        while self.active and time.monotonic() < t_end:
            time.sleep(0.02)
        return self.started

    def undisturbed(self, mark: int) -> bool:
        """Whether no serving call ran since :meth:`quiet_mark` returned ``mark``."""
        return self.active == 0 and self.started == mark


def timed_quietly(fn: Callable[[], object], activity: Activity | None,
                  clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one call of ``fn``, taken while no serving call ran (see :class:`Activity`;
    after ``activity.tries`` disturbed runs the last one counts)."""
    for _ in range(activity.tries if activity is not None else 1):
        mark = activity.quiet_mark() if activity is not None else 0
        t0 = clock()
        fn()
        secs = clock() - t0
        if activity is None or activity.undisturbed(mark):
            break
    return secs


@dataclass(frozen=True)
class Candidate:
    """One way to run the network step. ``build()`` returns the step function (it may raise, e.g.
    a failed compilation); ``exact`` marks the fp32 reference path that the others must beat;
    ``warm``: its first call compiles, so it runs once untimed before its checked run."""
    name: str
    build: Callable[[], StepFn]
    exact: bool = False
    warm: bool = False


@dataclass(frozen=True)
class Trial:
    """What one candidate measured: ms per image of its fastest run (None when it did not run or failed the
    check), its error against exact fp32 (max abs in [-1, 1] units, PSNR of 8-bit images), whether
    it passed (:data:`~cm_core.accel.verify.MAX_ABS`, :data:`~cm_core.accel.verify.MIN_PSNR`) and
    why it was not timed, if it was not (the exception it raised, or far slower at its first run)."""
    name: str
    ms_per_img: float | None
    max_abs: float | None
    psnr: float | None
    ok: bool
    error: str | None = None
    slower: float | None = None  # not timed for being this many times slower than the exact path


@dataclass(frozen=True)
class Plan:
    """The chosen candidate of one (network, device, bucket), why, and every trial."""
    chosen: str
    why: str
    bucket: int
    trials: tuple[Trial, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"chosen": self.chosen, "why": self.why, "bucket": self.bucket,
                "trials": [asdict(t) for t in self.trials]}

    @classmethod
    def from_json(cls, d: Mapping) -> Plan:
        trials = tuple(Trial(**t) for t in d["trials"])
        return cls(str(d["chosen"]), str(d["why"]), int(d["bucket"]), trials)

    def table(self) -> str:
        """One line per candidate (ms/img, max abs, PSNR, verdict), then the choice and why."""
        rows = [f"batch bucket {self.bucket}:",
                f"  {'candidate':<28} {'ms/img':>8}  {'max abs':>9}  {'PSNR':>9}  verdict"]
        for t in self.trials:
            ms = f"{t.ms_per_img:8.2f}" if t.ms_per_img is not None else "       -"
            err = f"{t.max_abs:9.1e}" if t.max_abs is not None else "        -"
            psnr = f"{t.psnr:6.1f} dB" if t.psnr is not None and t.psnr != float("inf") else (
                "   inf dB" if t.psnr is not None else "        -")
            verdict = "CHOSEN" if t.name == self.chosen else ("ok" if t.ok else (t.error or "fails the check"))
            rows.append(f"  {t.name:<28} {ms}  {err}  {psnr}  {verdict[:80]}")
        rows.append(f"  chosen: {self.chosen} ({self.why})")
        return "\n".join(rows)


def choose(trials: Sequence[Trial], exact: str, margin: float = MARGIN) -> tuple[str, str]:
    """(chosen name, why): the fastest passing trial when it beats the exact one's time by more
    than ``margin`` (relative), else the exact one. Trials that failed or raised never win."""
    ref = next((t for t in trials if t.name == exact), None)
    runs = [t for t in trials if t.ok and t.ms_per_img is not None and t.name != exact]
    if ref is None or ref.ms_per_img is None:
        return exact, "the exact path could not be timed"
    if not runs:
        return exact, "no other candidate passed the check"
    best = min(runs, key=lambda t: t.ms_per_img)
    gain = 1 - best.ms_per_img / ref.ms_per_img
    if gain > margin:
        return best.name, f"{gain:.0%} faster than {exact}, within the quality bound"
    return exact, f"the fastest passing candidate ({best.name}) gains {gain:.0%}, not over {margin:.0%}"


def interleaved_times(fns: Mapping[str, Callable[[], object]], rounds: int = 5, warmup: int = 1,
                        clock: Callable[[], float] = time.perf_counter,
                        prior: Mapping[str, Sequence[float]] | None = None,
                        activity: Activity | None = None,
                        stat: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Seconds of one call of each function (``stat`` of its samples, the median by default):
    ``warmup`` untimed calls each, then ``rounds``
    rounds that call every function once, in an order rotated by one each round (a machine that
    slows down mid-way slows every candidate alike). ``prior``: seconds already measured, by
    name, that join the samples; ``activity``: time only while it is quiet
    (:func:`timed_quietly`); ``stat``: how the samples become one figure (``min``: the fastest).
    Each function synchronises its own device."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: list((prior or {}).get(n, ())) for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n].append(timed_quietly(fns[n], activity, clock))
    return {n: stat(ts) for n, ts in times.items()}


Timer = Callable[[Mapping[str, Callable[[], object]]], Mapping[str, float]]


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def _runner(fn: StepFn, inputs: Inputs) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            out = fn(*inputs)
        _sync(out)
        return out
    return run


def _first_run(run: Callable[[], torch.Tensor], limit: Deadline | None, limit_s: float,
               activity: Activity | None) -> tuple[torch.Tensor | None, float]:
    """(output, or None when stopped at ``limit_s``; seconds), taken while serving is quiet."""
    out: list[torch.Tensor | None] = [None]
    capped = limit is not None and limit_s != math.inf

    def call() -> None:
        out[0] = None
        with limit.within(limit_s) if capped else nullcontext():  # type: ignore[union-attr]
            try:
                out[0] = run()
            except TooSlow:
                pass
    secs = timed_quietly(call, activity)
    return out[0], secs


def _tried(c: Candidate, inputs: Inputs, ref: torch.Tensor | None, limit: Deadline | None = None,
           limit_s: float = math.inf, activity: Activity | None = None
           ) -> tuple[Trial, Callable[[], torch.Tensor] | None, float, torch.Tensor | None]:
    """Build and run ``c`` once (after an untimed call if ``c.warm``): (its trial without a time,
    its runner when it ran and passed the check, else None, the seconds of that run, its clamped
    output). With a ``limit``, a run past ``limit_s`` seconds stops (:class:`TooSlow`)."""
    try:
        run = _runner(c.build(), inputs)
        if c.warm:
            run()
        got, secs = _first_run(run, limit, limit_s, activity)
        if got is None:
            return Trial(c.name, None, None, None, False), None, secs, None
    except Exception as e:  # noqa: BLE001 - a candidate that raises loses, whatever it raised
        log.info("plan candidate %s failed: %s: %s", c.name, type(e).__name__, e)
        return Trial(c.name, None, None, None, False, f"{type(e).__name__}: {str(e)[:200]}"), None, 0.0, None
    out = got.float().clamp(-1, 1)
    if ref is None:
        return Trial(c.name, None, 0.0, float("inf"), True), run, secs, out
    err, psnr = compare(out, ref)
    ok = err <= MAX_ABS and psnr >= MIN_PSNR
    return Trial(c.name, None, err, psnr, ok), (run if ok else None), secs, out


def _screened(c: Candidate, inputs: Inputs, ref: torch.Tensor, ref_s: float, slow: float,
              limit: Deadline | None, activity: Activity | None
              ) -> tuple[Trial, Callable[[], torch.Tensor] | None, float]:
    """Try ``c`` once; (its trial, its runner if it is worth timing, its run's seconds). A run
    over ``slow`` times the exact path's (10 ms floor: timer noise on tiny networks) cannot win:
    it is out, stopped there when ``limit`` watches its network."""
    cap = slow * ref_s + 0.01
    trial, run, secs, _ = _tried(c, inputs, ref, limit, cap, activity)
    if secs <= cap or (run is None and trial.error is not None):
        return trial, run, secs
    ratio = secs / ref_s
    why = (f"stopped after {ratio:.1f}x the exact path's time" if trial.max_abs is None
           else f"not timed: it ran {ratio:.1f}x slower than the exact path")
    return Trial(trial.name, None, trial.max_abs, trial.psnr, False, why, ratio), None, secs


def make_plan(candidates: Sequence[Candidate], inputs: Inputs, timer: Timer | None = None,
              margin: float = MARGIN, budget_s: float = 10.0, slow: float = SLOW,
              skip: Mapping[str, float] | None = None, limit: Deadline | None = None,
              activity: Activity | None = None) -> Plan:
    """Try every candidate on ``inputs`` (x [B, C, H, W] f32, sigma [B] f32, labels [B] long or
    None; B is the bucket), check it against the exact one's output, time the passing ones
    together and :func:`choose`.

    A candidate over ``slow`` times slower than the exact path on its first run cannot win and is
    not timed (:func:`_screened`); ``limit``, the :class:`Deadline` that the candidates' networks
    watch, stops it there. ``skip`` names those already found too slow at a smaller batch (name:
    times slower), which are not even run. ``timer`` (default: :func:`interleaved_times` over
    the first runs and as many rounds, 1 to 7, as fit ``budget_s`` seconds, taking each one's
    fastest run) returns seconds per call by name. The fastest, not the median: a first call's
    costs (a fresh copy's weight reorders took 20% of one LSUN 256 call) and a busy neighbour
    only ever add time, and of two or three samples a median is a mean that keeps them. Only
    the runs still in the race are timed (:func:`out_of_the_race`), none when one is left; the
    others keep their first run's time.
    ``activity``: the serving calls beside the planner; every run is timed while none runs
    (:class:`Activity`)."""
    exact = [c for c in candidates if c.exact]
    if len(exact) != 1:
        raise ValueError(f"a plan needs exactly one exact candidate, got {[c.name for c in exact]}")
    n = int(inputs[0].shape[0])
    first, run_exact, ref_s, ref = _tried(exact[0], inputs, None, activity=activity)
    if run_exact is None or ref is None:
        return Plan(exact[0].name, f"the exact path raised: {first.error}", n, (first,))
    trials, runs, firsts = {first.name: first}, {first.name: run_exact}, {first.name: [ref_s]}
    for c in (c for c in candidates if not c.exact):
        if skip and c.name in skip:
            trials[c.name] = Trial(c.name, None, None, None, False, f"not run: {skip[c.name]:.1f}x slower "
                                   "than the exact path at a smaller batch", skip[c.name])
            continue
        trials[c.name], run, secs = _screened(c, inputs, ref, ref_s, slow, limit, activity)
        if run is not None:
            runs[c.name] = run
            firsts[c.name] = [] if c.warm else [secs]
    out = out_of_the_race(firsts, slow)
    racing = {name: run for name, run in runs.items() if name not in out}
    secs_by_name = {name: firsts[name][0] for name in runs if firsts[name]}
    if len(racing) > 1 or not all(firsts[name] for name in racing):
        per_round = sum(firsts[name][0] if firsts[name] else ref_s for name in racing)
        rounds = max(1, min(7, int(budget_s / max(per_round, 1e-9))))
        secs_by_name.update((timer or (lambda r: interleaved_times(r, rounds=rounds, warmup=0, prior=firsts,
                                                                   activity=activity, stat=min)))(racing))
    timed = tuple(Trial(t.name, secs_by_name[t.name] * 1000 / n if t.name in secs_by_name else None,
                        t.max_abs, t.psnr, t.ok, t.error, t.slower) for t in trials.values())
    chosen, why = choose(timed, exact[0].name, margin)
    if out and len(racing) == 1:
        why += f"; decided on first runs: every other one took over {slow:g}x its time"
    return Plan(chosen, why, n, timed)


def out_of_the_race(firsts: Mapping[str, Sequence[float]], slow: float = SLOW) -> set[str]:
    """The names whose first run (``firsts``: seconds by name; empty when not timed) took over
    ``slow`` times the fastest first run, plus 10 ms of timer noise. A first run costs at most
    about 20% more than later ones (a fresh copy's weight reorders), so no later round can make
    them the fastest: they keep their first run's time and are not timed again. With ``slow`` =
    1.5, a bf16 candidate at half the exact path's time decides the plan on first runs alone."""
    timed = {name: s[0] for name, s in firsts.items() if s}
    if not timed:
        return set()
    best = min(timed.values())
    return {name for name, secs in timed.items() if secs > slow * best + 0.01}
