"""CPU-specific choices of the fast path: native bf16 detection, the CPU plan, buckets, the compiler.

On a CPU whose vector units compute bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``, i.e. Intel
Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later) oneDNN runs bf16 convolutions at about
twice the fp32 rate (measured on 2 Zen 5 cores: 850-890 against 420-440 GFLOP/s on the UNets' 3x3
convolutions; AMX has several times more) and moves half the bytes, so the fast path runs the
released UNets in bf16 with channels_last activations there, with the attention of
:mod:`cm_core.accel.cpu_attention`, the in-place resnet blocks of :mod:`cm_core.accel.lean_blocks`
and the allocator settings of :mod:`cm_core.accel.cpu_malloc`.
Elsewhere bf16 is emulated (slower than fp32), so fp32 stays. Every variant checks itself against
fp32 (:mod:`cm_core.accel.verify`). :func:`cpu_plan` has the choices and their measurements.

Compilation on CPU: Inductor with ``freezing`` (weights folded as constants and pre-packed for
oneDNN) and optionally ``max_autotune``, in the background over :data:`CPU_BUCKETS` while eager
serves. On the released networks (300-500M parameters, compute-bound: 87% of the ImageNet 64
step's FLOPs are convolutions already at oneDNN's speed) it gave nothing (Zen 4: 757-812 ms
compiled against 715-724 ms eager, 250 s to compile a bucket); on the embedded 32 px net it gains
~8% in fp32 (48 against 52 ms, 60 s per bucket). So ``compile="auto"`` does not compile on CPU;
``compile=True`` (``CM_COMPILE=1`` in the app) does, in the background over :data:`CPU_BUCKETS`.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from .compile_cache import Compiler, StepFn

__all__ = ["CPU_BUCKETS", "SMALL_NET_PARAMS", "CpuPlan", "cpu_compiler", "cpu_description", "cpu_plan", "cpuinfo",
           "native_bf16", "small_net"]

SMALL_NET_PARAMS = 20_000_000

# bounded: the app's CM_MAX_BATCH is 16; larger CPU batches are padded to a multiple of 16
CPU_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_fields(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """Each key of ``/proc/cpuinfo`` with its first value (empty where the file is missing)."""
    fields: dict[str, str] = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The ``model name`` and the ``flags`` of the first CPU in ``/proc/cpuinfo`` (empty where
    there is none)."""
    fields = _cpu_fields(path)
    flags = fields.get("flags", fields.get("Features", ""))
    return fields.get("model name", ""), set(flags.split())


def cpu_description(path: str = "/proc/cpuinfo") -> str:
    """The first CPU's model name with its family and model numbers, e.g. ``AMD EPYC (family 25
    model 1)``: the name alone can hide the generation that speed figures depend on."""
    f = _cpu_fields(path)
    if not f:
        return platform.processor() or "unknown CPU"
    return f"{f.get('model name', '?')} (family {f.get('cpu family', '?')} model {f.get('model', '?')})"


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
    return bool(cpuinfo()[1] & set(_BF16_FLAGS))


def cpu_compiler(max_autotune: bool = False) -> Compiler:
    """``torch.compile`` for CPU inference: static shapes (one graph per bucket), Inductor's
    ``freezing`` (constant weights, oneDNN weight pre-packing) and optionally ``max_autotune``
    (GEMM/conv template autotuning; slower to compile)."""
    opts = {"freezing": True, "max_autotune": bool(max_autotune)}

    def comp(fn: StepFn) -> StepFn:
        return torch.compile(fn, dynamic=False, fullgraph=False, options=opts)
    return comp


def small_net(net: torch.nn.Module) -> bool:
    """Whether a network is small (at most :data:`SMALL_NET_PARAMS` parameters, the embedded ones):
    overhead-bound on a CPU, where bf16 pays little (see :func:`cpu_plan`), and cheap enough to
    self-check on 16 images (:func:`cm_core.accel.verify.check_images`)."""
    return sum(p.numel() for p in net.parameters()) <= SMALL_NET_PARAMS


@dataclass(frozen=True)
class CpuPlan:
    """What ``dtype="auto"``, ``compile="auto"``, ``channels_last="auto"`` mean for a network on
    this CPU (:func:`cpu_plan`)."""
    dtype: torch.dtype
    compile: bool
    channels_last: bool


def cpu_plan(net: torch.nn.Module) -> CpuPlan:
    """The CPU defaults for ``net`` (measured on 2 cores of a Zen 5 EPYC):

    - a large network (the released ones) on a CPU with native bf16: bf16 + channels_last eager,
      with :mod:`cm_core.accel.cpu_attention`: ~2.2-3x fp32, max abs ~1e-2 vs fp32 on final images;
      without native bf16: the exact path (fp32, eager, contiguous);
    - a small network (the embedded 32 px ones), on any CPU: fp32 + channels_last eager. oneDNN's
      channels_last kernels run its 32-64-channel convolutions faster (16 images 68 -> 52 ms) with
      max abs ~7e-6 vs the exact path. bf16 is off: it is overhead-bound there (46-55 ms eager) and
      its rounding reaches 2.8-3.6e-2 on the trained 1.4M-parameter net (16-64 images, one and two
      steps), at or over the 3e-2 bound, and no mix of fp32 parts stays clearly within it (half
      the network in fp32 still gives 2.6e-2). Compiled fp32 gains ~8% (48 ms) for ~60 s of
      compilation per bucket; compiled bf16 runs 36 ms at 3.1e-2 (``optimize(den, dtype="bf16",
      compile=True)`` gives it, self-checked).
    """
    if small_net(net):
        return CpuPlan(torch.float32, False, True)
    if not native_bf16():
        return CpuPlan(torch.float32, False, False)
    return CpuPlan(torch.bfloat16, False, True)
