"""CPU-specific choices of the fast path: native bf16 detection, CPU buckets, the CPU compiler.

On a CPU whose vector units compute bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``, i.e. Intel
Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later) oneDNN runs bf16 convolutions and
matrix products at about twice the fp32 rate (more with AMX) and moves half the bytes, so the fast
path runs the UNet body in bf16 with channels_last activations there. Elsewhere bf16 is emulated
(slower than fp32), so fp32 stays. Measured on a 2-core AMD EPYC (Zen 4, ``avx512_bf16``): bf16 +
channels_last ~3x fp32 on the ImageNet 64 architecture (issue 14), with max abs 2-3e-2 on final
images, which is why every bf16 variant checks itself against fp32 (:mod:`cm_core.accel.verify`).

Compilation on CPU: Inductor with ``freezing`` (weights folded as constants and pre-packed for
oneDNN) and optionally ``max_autotune``, in the background over :data:`CPU_BUCKETS` while eager bf16
serves. It pays most where Python and kernel-launch overhead matter: the embedded 32 px net (1.4M
parameters, 16 images) went from 73 to 41 ms in bf16 (eager -> compiled; ~2 min of compilation per
bucket cold, 26 s from the persistent cache), but only 73 -> 69 ms in fp32, and bf16 is too near the
quality bound there (:func:`cpu_plan`). On the released networks (300-500M parameters, compute-bound)
it gains ~15% at batch 1 for ~130 s per bucket. So ``compile="auto"`` does not compile on CPU;
``compile=True`` (``CM_COMPILE=1`` in the app) does, in the background over :data:`CPU_BUCKETS`.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .compile_cache import Compiler, StepFn

__all__ = ["CPU_BUCKETS", "CPU_COMPILE_MAX_PARAMS", "cpu_compile_pays", "cpu_compiler", "cpu_plan",
           "native_bf16"]

CPU_COMPILE_MAX_PARAMS = 20_000_000

# bounded: the app's CM_MAX_BATCH is 16; larger CPU batches are padded to a multiple of 16
CPU_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The ``flags`` of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16``) and PyTorch's
    oneDNN can use it. ``$CM_CPU_BF16=0|1`` overrides the detection (e.g. to test either path)."""
    env = os.environ.get("CM_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    if not torch.backends.mkldnn.is_available():
        return False
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is not None for p in probes):
        return any(bool(p()) for p in probes if p is not None)
    return bool(_cpuinfo_flags() & set(_BF16_FLAGS))


def cpu_compiler(max_autotune: bool = False) -> Compiler:
    """``torch.compile`` for CPU inference: static shapes (one graph per bucket), Inductor's
    ``freezing`` (constant weights, oneDNN weight pre-packing) and optionally ``max_autotune``
    (GEMM/conv template autotuning; slower to compile)."""
    opts = {"freezing": True, "max_autotune": bool(max_autotune)}

    def comp(fn: StepFn) -> StepFn:
        return torch.compile(fn, dynamic=False, fullgraph=False, options=opts)
    return comp


def cpu_compile_pays(net: torch.nn.Module) -> bool:
    """Whether a network is small (at most :data:`CPU_COMPILE_MAX_PARAMS` parameters): overhead-bound
    on a CPU, where bf16 pays little (see :func:`cpu_plan`)."""
    return sum(p.numel() for p in net.parameters()) <= CPU_COMPILE_MAX_PARAMS


def cpu_plan(net: torch.nn.Module) -> tuple[torch.dtype, bool]:
    """``(dtype, compile)`` of ``dtype="auto"``, ``compile="auto"`` on this CPU.

    - no native bf16: ``(float32, False)``, the exact path;
    - a large network (the released ones): ``(bfloat16, False)``: bf16 + channels_last eager, ~2-3x
      fp32, max abs ~1e-2 vs fp32 on final images;
    - a small network (the embedded 32 px ones): ``(float32, False)``, the exact path. bf16 pays
      little there (overhead-bound: 16 images 73 -> 72 ms eager) and its weight rounding alone costs
      1.6e-2 on the trained 1.4M-parameter net, whose two-step samples then reach 3.4e-2, over the
      3e-2 bound; compiled fp32 gains only ~5-10% (69 ms) for ~80 s of compilation per bucket.
      Compiled bf16 runs 41 ms with max abs 2.95e-2 one-step, too near the bound to be a default
      (``optimize(den, dtype="bf16", compile=True)`` gives it, self-checked).
    """
    if not native_bf16():
        return torch.float32, False
    small = cpu_compile_pays(net)
    return (torch.float32, False) if small else (torch.bfloat16, False)
