"""The planner's choice put to work: per batch bucket, the step function of the candidate that
measured fastest on this machine (:mod:`cm_core.accel.planner`), built once in the background.

:class:`PlannedSteps` is what :func:`cm_core.accel.entry.optimize` attaches to a CPU
:class:`~cm_core.accel.fast.FastDenoiser` unless ``$CM_PLAN`` is ``off``. A bucket's first request
queues its plan (read from the plan cache, or measured) and is served by the fixed plan of
:func:`~cm_core.accel.cpu.cpu_plan` meanwhile; once the plan is known and its step built, the
bucket switches to it. Serving never waits for planning.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping

from ..models.denoiser import Denoiser
from .candidates import EXACT, candidates, plan_denoiser
from .compile_cache import StepFn, log
from .plan_cache import BackgroundPlanner, PlanCache, plan_key
from .planner import Activity, Plan

__all__ = ["PlannedSteps"]


class PlannedSteps:
    """``steps(bucket)``: the chosen step function of ``bucket``, or None while it is not ready.

    ``exact``: the fp32 :class:`Denoiser` the candidates are built from (and checked against);
    ``reuse``: steps that already exist by candidate name (the exact path, the fixed plan's
    variant), so choosing one of them costs no copy of the network. ``mode``: ``measure`` or
    ``cached`` (:func:`~cm_core.accel.planner.plan_mode`). ``activity``: entered by every serving
    call, so that planning never times a run while one is served.
    """

    def __init__(self, exact: Denoiser, reuse: Mapping[str, StepFn] | None = None,
                 cache: PlanCache | None = None, mode: str = "measure", budget_s: float = 10.0,
                 activity: Activity | None = None) -> None:
        self.exact = exact
        self.activity = activity if activity is not None else Activity()
        self.device = next(exact.parameters()).device
        self._candidates = {c.name: c for c in candidates(exact)}
        self._steps: dict[str, StepFn] = dict(reuse or {})
        self._lock = threading.Lock()
        self.planner = BackgroundPlanner(self._measure, self._key, cache or PlanCache(), mode,
                                         on_plan=self._build)
        self._budget_s = budget_s

    def _measure(self, bucket: int) -> Plan:
        return plan_denoiser(self.exact, bucket, budget_s=self._budget_s,
                             smaller=list(self.planner.plans.values()), activity=self.activity)

    def _key(self, bucket: int) -> str:
        return plan_key(self.exact.net, self.device, bucket)

    def _build(self, bucket: int, plan: Plan) -> None:
        """In the planner's thread: build the chosen candidate's step unless it exists."""
        with self._lock:
            if plan.chosen in self._steps:
                return
        step = self._candidates[plan.chosen].build() if plan.chosen in self._candidates else None
        if step is None:
            log.warning("the plan of bucket %d chose %r, which is not a candidate here; keeping the "
                        "fixed plan", bucket, plan.chosen)
            return
        with self._lock:
            self._steps.setdefault(plan.chosen, step)

    def __call__(self, bucket: int) -> StepFn | None:
        name = self.planner.chosen(bucket)
        if name is None:
            return None
        with self._lock:
            return self._steps.get(name)

    def plan_now(self, buckets: list[int], timeout: float | None = None) -> dict[int, Plan]:
        """Plan ``buckets`` and wait (benchmarks, the CLI): their plans, by bucket."""
        for b in buckets:
            self.planner.chosen(b)
        self.planner.wait(timeout)
        return {b: self.planner.plans[b] for b in buckets if b in self.planner.plans}

    def describe(self, bucket: int) -> str | None:
        """"planned <candidate> (..., 2.1x the exact path)" once ``bucket`` serves its plan, else None."""
        plan = self.planner.plans.get(bucket)
        if plan is None or self(bucket) is None:
            return None
        t = next(t for t in plan.trials if t.name == plan.chosen)
        ref = next((r for r in plan.trials if r.name == EXACT), None)
        if t is ref or not t.max_abs:
            return f"planned {plan.chosen} (no other candidate was clearly faster here)"
        speed = (f", {ref.ms_per_img / t.ms_per_img:.2f}x the exact path"
                 if ref is not None and ref.ms_per_img and t.ms_per_img else "")
        return f"planned {plan.chosen} (max abs {t.max_abs:.1e}, PSNR {t.psnr:.1f} dB vs fp32{speed})"
