"""The variants the planner times for one :class:`~cm_core.models.denoiser.Denoiser` on its device.

Each :class:`~cm_core.accel.planner.Candidate` builds a step function with the fast path's
contract (``fn(x, sigma, labels)``: x [B, C, H, W] f32, sigma [B] f32, labels [B] long or None;
the unclamped denoised estimate, f32): the exact fp32 :class:`Denoiser` itself, or a
:class:`~cm_core.accel.fast.FastDenoiser` cast copy run eagerly (or compiled).

- CPU: fp32 contiguous (exact), fp32 channels_last, bf16 channels_last (with the chunked CPU
  attention of :mod:`~cm_core.accel.cpu_attention`), fp16 channels_last where oneDNN has fp16
  kernels, and their compiled versions when ``compile`` is on.
- CUDA: fp32 (exact), fp16 and bf16 channels_last eager, compiled when ``compile`` is on, and
  the fastest build of each (compiled, else eager) replayed as one CUDA graph per input shape
  (:func:`graphed`): at batch 1 launch overheads are most of a call. A capture that fails raises
  and the candidate loses.

A variant copy is built only when the planner tries it and dropped with the plan.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..models.denoiser import Denoiser
from . import cuda_graphs
from .compile_cache import Compiler, StepFn
from .cpu import cpu_compiler
from .fast import FastDenoiser, default_compiler
from .planner import Activity, Candidate, Deadline, Plan, Timer, make_plan
from .verify import EXACT, exact_step, fixed_input, variant_name

__all__ = ["EXACT", "candidates", "graphed", "plan_denoiser", "variant_name"]



def _exact(den: Denoiser) -> Callable[[], StepFn]:
    return lambda: partial(exact_step, den)


def _variant(den: Denoiser, dtype: torch.dtype, channels_last: bool,
             compiler: Compiler | None, limit: Deadline | None) -> Callable[[], StepFn]:
    """A builder of a cast copy of ``den`` run as :class:`FastDenoiser` steps (no padding, no
    self-check: the planner checks it). An eager copy's modules watch ``limit``."""
    def build() -> StepFn:
        dev = next(den.parameters()).device
        fast = FastDenoiser(copy.deepcopy(den), dev, dtype, compiler, (1,), pad=False,
                            channels_last=channels_last, cuda_graphs=False, exact=den, verify=False)
        if fast.compiled_step is not None:
            return fast.compiled_step
        if limit is not None:
            limit.watch(fast.den.net)
        return fast._step_impl
    return build


def _cpu_fp16_kernels() -> bool:
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", None)
    return bool(probe()) if probe is not None else False


def candidates(den: Denoiser, compile: bool = False, limit: Deadline | None = None) -> list[Candidate]:
    """The candidates for ``den`` (fp32, on its device): the exact one first. ``limit``: the
    :class:`~cm_core.accel.planner.Deadline` that eager variants check while planned."""
    dev = next(den.parameters()).device
    out = [Candidate(EXACT, _exact(den), exact=True)]
    if dev.type == "cuda":
        dtypes = [torch.float16, torch.bfloat16]
        comp: Compiler | None = default_compiler("max-autotune-no-cudagraphs") if compile else None
    else:
        dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if _cpu_fp16_kernels() else [])
        comp = cpu_compiler() if compile else None
    for dt in dtypes:  # all channels_last: contiguous is the exact path's layout
        out.append(Candidate(variant_name(dt, True), _variant(den, dt, True, None, limit)))
        if comp is not None:
            out.append(Candidate(variant_name(dt, True, compiled=True), _variant(den, dt, True, comp, None),
                                 warm=True))
        if dev.type == "cuda":
            out.append(Candidate(variant_name(dt, True, compiled=comp is not None) + " graphed",
                                 graphed(_variant(den, dt, True, comp, None)), warm=True))
    return out


def graphed(build: Callable[[], StepFn]) -> Callable[[], StepFn]:
    """A builder of ``build``'s step replayed as a CUDA graph
    (:class:`~cm_core.accel.cuda_graphs.GraphedCall`), one per input shape, captured at its first
    call with those inputs. No capture while a compilation runs in this process: that call
    raises, as does a capture that fails."""
    def make() -> StepFn:
        step, graphs = build(), {}

        def run(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            key = (tuple(x.shape), labels is None)
            if key not in graphs:
                with cuda_graphs.capture_slot() as free:
                    if not free:
                        raise RuntimeError("a compilation is under way in this process: no capture now")
                    graphs[key] = cuda_graphs.GraphedCall(step, (x, sigma, labels))
            return graphs[key](x, sigma, labels)
        return run
    return make


def plan_denoiser(den: Denoiser, bucket: int, compile: bool = False, timer: Timer | None = None,
                  budget_s: float = 10.0, smaller: Sequence[Plan] = (), activity: Activity | None = None
                  ) -> Plan:
    """Measure :func:`candidates` for batches of ``bucket`` on the fixed input of
    :mod:`~cm_core.accel.verify` (noise at sigma_max and at intermediate levels). ``smaller``:
    plans of smaller buckets; a candidate found too slow to time there
    (:data:`~cm_core.accel.planner.SLOW`) is not run again. ``activity``: the serving calls beside
    the planner, never timed over (:class:`~cm_core.accel.planner.Activity`)."""
    dev = next(den.parameters()).device
    skip = {t.name: t.slower for p in smaller if p.bucket < bucket for t in p.trials if t.slower is not None}
    limit = Deadline()
    return make_plan(candidates(den, compile, limit), fixed_input(den, dev, bucket), timer=timer,
                     budget_s=budget_s, skip=skip, limit=limit, activity=activity)
