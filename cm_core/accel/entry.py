"""The one public entry of the fast path: :func:`optimize` wraps a :class:`Denoiser` in a
:class:`~cm_core.accel.fast.FastDenoiser` with the dtype, layout, compilation and CUDA graphs
that suit its device."""
from __future__ import annotations

import copy as _copy
from collections.abc import Sequence
from pathlib import Path

import torch

from ..models.denoiser import Denoiser
from .candidates import EXACT, variant_name
from .compile_cache import Compiler, _mega_cache, default_compiler
from .cpu import CPU_BUCKETS, cpu_compiler, cpu_plan
from .fast import DEFAULT_BUCKETS, FastDenoiser, pick_dtype
from .planned import PlannedSteps
from .planner import plan_mode
from .process import setup_process

__all__ = ["optimize"]


def optimize(den: Denoiser, device: str | torch.device | None = None,
             dtype: str | torch.dtype = "auto", compile: bool | str = "auto",
             channels_last: bool | str = "auto", cuda_graphs: bool | str = "auto",
             warm_buckets: Sequence[int] = (1,), copy: bool = False,
             compiler: Compiler | None = None, verify: bool = True) -> FastDenoiser:
    """Wrap ``den`` in a :class:`FastDenoiser` that every sampler and editor accepts.

    ``den`` is moved to ``device`` in place (unless ``copy``) and, when the fast variant differs
    from it, kept in fp32 as the exact reference; the variant is a cast copy. Every option is
    ``"auto"`` by default, or explicit:

    - ``dtype``: fp16 on CUDA; on a CPU, the fixed plan of :func:`~cm_core.accel.cpu.cpu_plan`
      until the planner (:mod:`~cm_core.accel.planned`, ``$CM_PLAN``) has timed the candidates
      of each batch bucket on this machine and chosen.
    - ``compile``: on CUDA only (``max-autotune-no-cudagraphs``: the graphs are ours); ``True``
      compiles on a CPU too (Inductor with freezing). Batches are then padded to batch buckets
      (:data:`DEFAULT_BUCKETS`, :data:`~cm_core.accel.cpu.CPU_BUCKETS` on CPU), and
      ``warm_buckets`` compile at once in the background (:meth:`FastDenoiser.wait` waits for
      them); the others when first used. ``compiler`` replaces torch.compile (tests).
    - ``channels_last``: on CUDA, with CPU bf16, and for small nets on CPU.
    - ``cuda_graphs``: whole-loop CUDA graphs on CUDA.

    ``verify``: each variant checks itself against fp32 when it first serves
    (:mod:`cm_core.accel.verify`). The process-wide settings this needs are made by
    :func:`~cm_core.accel.process.setup_process`, which says what it changes (Inductor's cache:
    ``$TORCHINDUCTOR_CACHE_DIR``, else ``~/.cache/cm-studio/inductor``).
    """
    dev = torch.device(device) if device is not None else next(den.parameters()).device
    cuda = dev.type == "cuda"
    buckets = CPU_BUCKETS if dev.type == "cpu" else DEFAULT_BUCKETS
    plan = cpu_plan(den) if dev.type == "cpu" else None
    dt = plan.dtype if dtype == "auto" and plan is not None else pick_dtype(dev, dtype)
    auto_compile = plan.compile if plan is not None else cuda
    use_compile = compiler is not None or (auto_compile if compile == "auto" else bool(compile))
    settings = setup_process(dev, use_compile and compiler is None, len(buckets))
    cache_file = None
    if use_compile and compiler is None:
        mode = "max-autotune-no-cudagraphs" if cuda else "default"
        name = f"mega-{den.name or 'model'}-{dev.type}-{mode}.bin".replace("/", "_")
        cache_file = Path(settings["inductor cache"]) / name
        _mega_cache(cache_file, save=False)
        compiler = default_compiler(mode) if cuda else cpu_compiler()
    graphs = cuda and (cuda_graphs == "auto" or bool(cuda_graphs))
    if copy:
        den = _copy.deepcopy(den)
    cl = (cuda or dt == torch.bfloat16 or (plan is not None and plan.channels_last)
          if channels_last == "auto" else bool(channels_last))
    exact = None
    if dt != torch.float32 or use_compile or cl:  # the variant differs: keep fp32 as the reference
        exact = den.to(device=dev, dtype=torch.float32).eval()
        den = _copy.deepcopy(exact)
    fast = FastDenoiser(den, dev, dt, compiler if use_compile else None, buckets,
                        pad=use_compile or graphs, channels_last=cl, cuda_graphs=graphs,
                        cache_file=cache_file, exact=exact, verify=verify)
    if warm_buckets:
        fast.warmup(warm_buckets)
    if dev.type == "cpu" and not use_compile and dtype == "auto" and channels_last == "auto":
        _attach_planner(fast)
    return fast


def _attach_planner(fast: FastDenoiser) -> None:
    """Unless ``$CM_PLAN`` is ``off``: let the planner choose each bucket's variant on this CPU
    (:mod:`cm_core.accel.planned`), the fixed plan serving until it has."""
    mode = plan_mode()
    if mode == "off":
        return
    exact = fast.exact if fast.exact is not None else fast.den
    reuse = {EXACT: fast._exact_step}
    if fast.exact is not None:  # the fixed plan's variant, by its candidate name
        reuse[variant_name(fast.dtype, fast.channels_last)] = fast._step_impl
    fast.planned = PlannedSteps(exact, reuse, mode=mode, activity=fast.serving)
