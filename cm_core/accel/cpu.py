"""CPU-specific choices of the fast path: native bf16 detection, CPU buckets, the CPU compiler.

On a CPU whose vector units compute bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``, i.e. Intel
Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later) oneDNN runs bf16 convolutions and
matrix products at about twice the fp32 rate (more with AMX) and moves half the bytes, so the fast
path runs the UNet body in bf16 with channels_last activations there. Elsewhere bf16 is emulated
(slower than fp32), so fp32 stays. Measured on a 2-core AMD EPYC (Zen 4, ``avx512_bf16``): bf16 +
channels_last ~3x fp32 on the ImageNet 64 architecture (issue 14), with max abs 2-3e-2 on final
images, which is why every bf16 variant checks itself against fp32 (:mod:`cm_core.accel.verify`).

Compilation on CPU: Inductor with ``freezing`` (weights folded as constants and pre-packed for
oneDNN) and optionally ``max_autotune``; it costs minutes of both cores per batch bucket and gains
~15% at batch 1 on ImageNet 64, so ``compile="auto"`` leaves it off on CPU (``compile=True`` or
``CM_COMPILE=1`` turns it on; it then runs in the background over :data:`CPU_BUCKETS`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .compile_cache import Compiler, StepFn

__all__ = ["CPU_BUCKETS", "cpu_compiler", "native_bf16"]

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
