"""The fast path: a :class:`Denoiser` in half precision, channels_last, compiled and CUDA-graphed.

``optimize(den)`` returns a :class:`FastDenoiser` that is a drop-in replacement for the
:class:`~cm_core.models.denoiser.Denoiser` (same call ``den(x, sigma, class_labels)``, same attributes used
by the samplers), plus :meth:`FastDenoiser.run_graphed`, through which
:mod:`cm_core.sampling.runner` runs the samplers' and editors' loop (network evaluations, clamps,
replacements and pre-drawn noise) as one CUDA graph.

Why this is hand-written rather than just ``torch.compile(mode="reduce-overhead")``:

- **Bounded compile cost.** Every new batch shape costs a compilation (about 90 s with
  max-autotune on an H100). Batches are padded to the next of a small fixed set of *buckets*
  (``(1, 2, 4, ..., 256)``), so at most ``len(buckets)`` shapes are ever compiled, and the
  Inductor FX-graph / autotune caches are kept in a persistent directory (plus Dynamo's
  "mega-cache" artifacts) so a restart reloads instead of recompiling.
- **No waiting for compilation.** Buckets compile in a background thread while the eager
  network serves requests; a bucket switches to its compiled version once it is ready. A
  failed compilation leaves the eager path in place (and is reported in ``stats``).
- **Whole-loop CUDA graphs.** ``reduce-overhead`` graphs each compiled call separately and
  cannot hold the sampler's loop; here one graph per loop (batch shape, noise levels, editor)
  holds every network evaluation, the clamps, replacements and noise additions, with the image,
  labels and pre-drawn noise in static device buffers, so a multistep or editing call is one
  ``replay()`` with no host synchronisation inside.
- **fp32 sigma math, fp32 time input.** Scalings ``c_skip, c_out, c_in`` and the time input
  ``250 log sigma`` stay float32 (in bf16, ``250 log 80 = 1095`` would be rounded to a multiple
  of 8); only the UNet body runs in bf16/fp16.

On a CPU with native bf16 (:func:`cm_core.accel.cpu.native_bf16`) the defaults are bf16 +
channels_last, eager (compilation on request, see :mod:`cm_core.accel.cpu`); on other CPUs they
give the exact path (fp32, eager, no padding): same numbers as the :class:`Denoiser`.
Everything CUDA-specific is guarded by ``device.type == "cuda"``.

Every variant other than the exact one checks itself against exact fp32 the first time it would
serve (:mod:`cm_core.accel.verify`); beyond the quality bound the exact fp32 path serves instead.

Parts: :mod:`cm_core.accel.cuda_graphs` (:class:`GraphedCall`, :class:`GraphCache`) and
:mod:`cm_core.accel.compile_cache` (persistent caches,
:class:`~cm_core.accel.compile_cache.BackgroundCompiler`); their public names are re-exported here.
"""
from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from ..models.denoiser import Denoiser, Rng, check_labels
from ..models.network import dropout_rate
from .compile_cache import (
    BackgroundCompiler,
    Compiler,
    StepFn,
    configure_compile_cache,
    default_compiler,
)
from .cpu import native_bf16
from .cpu_attention import attention_processors, install_cpu_attention
from .cuda_graphs import GraphCache, GraphedCall, timed
from .lean_blocks import install_lean_resnets
from .planner import Activity
from .verify import EXACT, Check, SelfCheck, _pad, variant_name

__all__ = ["DEFAULT_BUCKETS", "FastDenoiser", "GraphedCall", "attention_processors", "bucket_for",
           "configure_compile_cache", "default_compiler", "pick_dtype", "timed"]

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# ----------------------------------------------------------------------------------------- setup
def pick_dtype(device: torch.device, dtype: str | torch.dtype = "auto") -> torch.dtype:
    """Network dtype: ``"auto"`` = fp16 on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere; explicit choices are strings
    ``"float32" | "float16" | "bfloat16" | "fp32" | "fp16" | "bf16"`` or torch dtypes.

    Why fp16 rather than bf16 by default: the released checkpoints were trained and sampled in
    fp16 (``--use_fp16 True`` in the original launch.sh), so fp16 activations do not overflow,
    and fp16's 10-bit mantissa keeps the one-step output within ~2e-3 of fp32, where bf16
    (7 bits) gives ~9e-3 on ImageNet-64 and ~2e-2 on the embedded 32px net (random weights,
    measured on CPU), over the 1e-2 bound. H100/A100 run both at the same tensor-core rate.
    bf16 stays available (``dtype="bf16"``); a GPU without fast fp16 is not a target. On CPUs fp16
    is emulated, while bf16 runs natively on ``avx512_bf16`` / AMX; its error is checked per
    variant against fp32 (:mod:`cm_core.accel.verify`).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    alias = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
    if dtype != "auto":
        return getattr(torch, alias.get(dtype, dtype))
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and native_bf16() else torch.float32


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``n``; above the largest, ``n`` rounded up to a multiple of it."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    for b in sorted(buckets):
        if b >= n:
            return b
    top = max(buckets)
    return -(-n // top) * top


# --------------------------------------------------------------------------------- the denoiser
class BucketPlans(Protocol):
    """What serves each batch bucket once planned (:class:`~cm_core.accel.planned.PlannedSteps`)."""

    def __call__(self, bucket: int) -> StepFn | None:
        """The chosen step of ``bucket``, or None while it is not ready (the fixed plan serves)."""

    def describe(self, bucket: int) -> str | None:
        """The info line's path once ``bucket`` serves its plan, else None."""


class FastDenoiser(torch.nn.Module):
    """A :class:`Denoiser` run fast: same call contract, plus whole-loop :meth:`run_graphed`.

    ``den(x, sigma, class_labels, dropout_rng=None)``: ``x`` [B, C, H, W] (any float dtype),
    ``sigma`` [B] or a float, labels [B] long (or one label for all); returns the unclamped clean
    estimate in ``x``'s dtype. Monte-Carlo dropout (``dropout > 0`` with an rng) runs the exact
    eager :class:`Denoiser`, since per-image dropout generators cannot be compiled or graphed.
    ``exact``: the fp32 reference (None when ``den`` itself is run exactly: fp32, eager).
    Build it with :func:`optimize`.
    """

    def __init__(self, den: Denoiser, device: torch.device, dtype: torch.dtype,
                 compiler: Compiler | None, buckets: Sequence[int], pad: bool,
                 channels_last: bool, cuda_graphs: bool, cache_file: Path | None = None,
                 exact: Denoiser | None = None, verify: bool = True) -> None:
        super().__init__()
        self.den = den.to(device=device, dtype=dtype).eval()
        if channels_last:
            self.den.net.to(memory_format=torch.channels_last)
        self.cpu_attention = device.type == "cpu" and dtype == torch.bfloat16 and channels_last
        if self.cpu_attention:
            install_cpu_attention(self.den.net)
        if device.type == "cpu" and exact is not None:  # a checked variant: in-place resnet blocks
            install_lean_resnets(self.den.net)
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.buckets, self.pad = tuple(sorted(buckets)), pad
        self.resolution = int(den.image_size or den.net.config.sample_size)
        # the compiled step, compiled per bucket in the background (None: eager only)
        self.compiler = (BackgroundCompiler(compiler(self._step_impl), self._dummy, device,
                                            self._accept_compiled, cache_file)
                         if compiler is not None else None)
        # set by optimize where the planner chooses the variant per bucket (accel/planned.py);
        # every call is counted in ``serving``, so that the planner never times over one
        self.planned: BucketPlans | None = None
        self.serving = Activity()
        # eager/compiled_calls count network calls run outside graphs (and in warm-up and capture);
        # a replay counts once in graph_replays, whatever its number of evaluations
        # (the compiler's compile_s and compile_error are read through it)
        counts = {"eager_calls": 0, "compiled_calls": 0, "exact_calls": 0, "planned_calls": 0}
        self.graphs = GraphCache(cuda_graphs and device.type == "cuda", counts)  # whole-loop graphs
        compiling = self.compiler.stats if self.compiler is not None else {"compile_s": {}, "compile_error": None}
        self.stats: ChainMap = ChainMap(counts, compiling)
        self.exact = exact
        self.checker = SelfCheck(self.den, exact, device, self._step_for, self._variant_name, verify)
        self.stats["checks"] = self.checker.checks

    # --- Denoiser attributes used by the samplers, generate.py and the app
    kind = property(lambda self: self.den.kind)
    name = property(lambda self: self.den.name)
    sigma_min = property(lambda self: self.den.sigma_min)
    sigma_max = property(lambda self: self.den.sigma_max)
    sigma_data = property(lambda self: self.den.sigma_data)
    num_classes = property(lambda self: self.den.num_classes)
    class_cond = property(lambda self: self.den.class_cond)
    image_size = property(lambda self: self.den.image_size)
    net = property(lambda self: self.den.net)

    @property
    def dropout(self) -> float:
        return self.den.dropout

    @dropout.setter
    def dropout(self, p: float) -> None:
        self.den.dropout = p
        if self.exact is not None:
            self.exact.dropout = p

    @property
    def cuda_graphs(self) -> bool:
        """Whether whole loops are set to run as CUDA graphs (:class:`GraphCache`); see
        :attr:`graphs_active` for whether they still do."""
        return self.graphs.enabled

    @property
    def graphs_active(self) -> bool:
        """Whether loops run as CUDA graphs: on CUDA, graphs on, and no capture has failed."""
        return self.graphs.active

    def close(self) -> None:
        """Release what keeps device memory: queued compilations and the cached CUDA graphs
        (called by the app's model cache when it evicts this model)."""
        if self.compiler is not None:
            self.compiler.stop()
        self.graphs.clear()

    @property
    def checks(self) -> dict:
        """{(bucket, compiled): :class:`~cm_core.accel.verify.Check`} of the variants checked so far."""
        return self.checker.checks

    def _variant_name(self, b: int, compiled: bool) -> str:
        return f"{variant_name(self.dtype, self.channels_last, compiled)}, bucket {b}"

    def _step_for(self, compiled: bool) -> StepFn:
        comp = self.compiled_step
        return comp if compiled and comp is not None else self._step_impl

    def _exact_step(self, x: torch.Tensor, sig: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The exact fp32 path with the step's contract (f32 in, f32 out)."""
        return self.checker.exact_step(x, sig, labels)

    def check_variants(self, batch_sizes: tuple[int, ...] = (1,), compiled: bool = False) -> list[Check]:
        """Check the variants of ``batch_sizes`` now (``compiled`` ones too, when compiled)."""
        out = []
        for n in batch_sizes:
            b = self._check_bucket(n)
            for comp in (False, True) if compiled and self.compiler is not None else (False,):
                if not self.checker.is_exact(comp):
                    self.checker.ok(b, comp)
                    out.append(self.checks[(b, comp)])
        return out

    @property
    def compiled_step(self) -> StepFn | None:
        """The compiled step function (all buckets), or None when not compiling."""
        return self.compiler.compiled if self.compiler is not None else None

    def ready(self, bucket: int) -> bool:
        """Whether ``bucket`` runs compiled (else eager)."""
        return self.compiler is not None and self.compiler.ready(bucket)

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Queue the buckets of ``batch_sizes`` (default: all buckets) for compilation in the
        background, smallest first (:meth:`wait` waits for them)."""
        if self.compiler is None:
            return
        for b in {self._bucket(n) for n in (batch_sizes or self.buckets)}:
            self.compiler.request(b)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the queued compilations are done; True when they are."""
        return self.compiler.wait(timeout) if self.compiler is not None else True

    def _dummy(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Inputs of a batch of ``b`` for a bucket's first, compiling call."""
        x = torch.zeros(b, 3, self.resolution, self.resolution, device=self.device)
        sig = torch.full((b,), float(self.sigma_max), device=self.device)
        lab = torch.zeros(b, dtype=torch.long, device=self.device) if self.class_cond else None
        return x, sig, lab

    # --- one network evaluation
    def _step_impl(self, x: torch.Tensor, sig: torch.Tensor, labels: torch.Tensor | None
                   ) -> torch.Tensor:
        """``D(x, sig)`` unclamped. x: [B,C,H,W] f32 contiguous, sig: [B] f32, labels: [B] long.

        The compile target. Scalings and the time input stay float32; the UNet runs in
        ``self.dtype`` and channels_last; the result is f32 and contiguous (stable strides keep
        Dynamo's guards, hence one graph per bucket).
        """
        c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in self.den.scalings(sig))
        x_in = (c_in * x).to(self.dtype)
        if self.channels_last:
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        out = self.den.net(x_in, self.den.time_input(sig), class_labels=labels).sample
        return (c_out * out.float() + c_skip * x).contiguous()

    def _fn_for(self, bucket: int) -> StepFn:
        if self.planned is not None and (fn := self.planned(self._check_bucket(bucket))) is not None:
            self.stats["planned_calls"] += 1
            return fn
        if self.compiler is not None and self.compiler.ready(bucket):
            self.stats["compiled_calls"] += 1
            return self.compiler.compiled
        if self.compiler is not None:
            self.compiler.request(bucket)
        if not self.checker.ok(self._check_bucket(bucket), False):
            self.stats["exact_calls"] += 1
            return self._exact_step
        self.stats["eager_calls"] += 1
        return self._step_impl

    def _check_bucket(self, n: int) -> int:
        """The bucket a batch of ``n`` is checked under (eager batches are not padded, but are
        checked per bucket, so at most ``len(buckets)`` checks)."""
        return bucket_for(n, self.buckets)

    def _accept_compiled(self, bucket: int) -> bool:
        """Called by the compile worker before a compiled bucket switches on: its self-check."""
        return self.checker.ok(bucket, True)

    def describe_path(self, n: int) -> str:
        """Which path serves a batch of ``n`` now, and its measured error vs fp32 (info lines)."""
        b = self._check_bucket(n)
        if self.planned is not None and (text := self.planned.describe(b)) is not None:
            return text
        if self.ready(b) and (b, True) in self.checks:
            c = self.checks[(b, True)]
        elif self.checker.is_exact(False):
            return EXACT
        elif (c := self.checks.get((b, False))) is None:
            return f"fast {self._variant_name(b, False)} (not checked yet)"
        if c.ok:
            return f"fast {c.variant} (max abs {c.max_abs:.1e}, PSNR {c.psnr:.1f} dB vs fp32)"
        return f"{EXACT} (fast {c.variant} turned off: max abs {c.max_abs:.1e}, PSNR {c.psnr:.1f} dB)"

    def _bucket(self, n: int) -> int:
        return bucket_for(n, self.buckets) if self.pad else n

    def check_labels(self, labels: torch.Tensor | int | None, n: int) -> torch.Tensor | None:
        """:func:`cm_core.models.denoiser.check_labels` on this model's device, contiguous."""
        lab = check_labels(labels, n, self.num_classes, self.device)
        return None if lab is None else lab.contiguous()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None, dropout_rng: Rng = None) -> torch.Tensor:
        if dropout_rate(dropout_rng, self.den.dropout) > 0:
            ref = self.exact if self.exact is not None else self.den
            with self.serving:
                return ref(x, sigma, class_labels, dropout_rng)
        n = x.shape[0]
        sig = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        sig = sig.expand(n) if sig.numel() == 1 else sig
        labels = self.check_labels(class_labels, n)
        b = self._bucket(n)
        with torch.no_grad(), self.serving:
            out = self._fn_for(b)(_pad(x.float().contiguous(), b), _pad(sig.contiguous(), b),
                                  _pad(labels, b))
        return out[:n].to(x.dtype)

    def run_graphed(self, key: object, fn: Callable[..., torch.Tensor],
                    *inputs: torch.Tensor | None) -> torch.Tensor:
        """Run ``fn(*inputs)`` as one CUDA graph cached under ``key`` (put shapes and the step
        count in it); a plain call on CPU, or for good once a capture has failed, or while a
        compilation is under way in this process (it would invalidate the capture; the graph
        is captured on a later call).

        Used by :func:`cm_core.sampling.runner.run_loop` (the samplers' and editors' loop) with
        pre-drawn noise and device labels as inputs: ``fn`` must not synchronise with the host
        (no ``.item()``, no host-side checks of device values). The graph of a key is
        re-captured once the compiled step of the batch's bucket is ready, replacing the eager one.
        """
        if not self.graphs_active:
            return fn(*inputs)
        b = self._bucket(next(t for t in inputs if t is not None).shape[0])
        return self.graphs.run(key, self.ready(b), fn, inputs)
