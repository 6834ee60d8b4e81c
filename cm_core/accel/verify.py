"""Self-verification of the fast path: each fast variant checks itself against exact fp32 once.

A *variant* is (model, device, dtype, batch bucket, compiled or not). The first time a variant would
serve, :class:`SelfCheck` runs it on a fixed input (:func:`fixed_input`: half pure noise at
``sigma_max``, i.e. one-step samples, half noise at intermediate levels, as in multistep sampling
and editing; 16 images for small networks, 2 for the released ones, :func:`check_images`) in
batches of the bucket, and compares the clamped outputs with the exact fp32 :class:`~cm_core.models.denoiser.Denoiser`
on the same input. The quality bound is that of final images:

- max abs difference <= :data:`MAX_ABS` (3e-2) in [-1, 1] units;
- PSNR of the 8-bit images >= :data:`MIN_PSNR` (40 dB).

A variant beyond the bound is turned off for that model (logged, kept in ``stats["checks"]``): an
eager variant hands its bucket to the exact fp32 path, a compiled one never switches on (its eager
variant keeps serving). This also guards hardware nobody could try (the CUDA paths have not run
on a GPU). :func:`describe_path` says which path serves a batch and its measured error (the app's
info line and ``python -m cm_core models --check-fast``).
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.denoiser import Denoiser
from .compile_cache import StepFn
from .cpu import small_net

__all__ = ["EXACT", "MAX_ABS", "MIN_PSNR", "Check", "SelfCheck", "check_images", "compare",
           "describe_path", "exact_step", "fixed_input", "short_dtype", "variant_name"]

MAX_ABS = 3e-2
MIN_PSNR = 40.0
log = logging.getLogger("cm_core.fast")


@dataclass(frozen=True)
class Check:
    """The measured error of one variant against exact fp32 on the fixed input."""
    variant: str      # e.g. "bf16 channels_last eager, bucket 4"
    max_abs: float    # in [-1, 1] units, clamped outputs
    psnr: float       # dB, 8-bit images (inf when equal)
    ok: bool          # within MAX_ABS and MIN_PSNR

    def describe(self) -> str:
        verdict = "ok" if self.ok else f"OFF (bound: max abs <= {MAX_ABS:g}, PSNR >= {MIN_PSNR:g} dB)"
        return f"{self.variant}: max abs {self.max_abs:.1e}, PSNR {self.psnr:.1f} dB vs fp32 - {verdict}"


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round()


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs of the clamped [-1, 1] images, PSNR in dB of their 8-bit versions)."""
    err = (out.float().clamp(-1, 1) - ref.float().clamp(-1, 1)).abs().max().item()
    mse = (_uint8(out) - _uint8(ref)).pow(2).mean().item()
    return err, (math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))


def check_images(den: Denoiser) -> int:
    """How many images the check runs: 16 for a small network (:func:`~cm_core.accel.cpu.small_net`:
    a check costs milliseconds there, and the max abs of a 16-image batch is what users see; two
    images passed bf16 on the embedded net at 2.2e-2 while its 16-image batches reach 3.3e-2), 2 for
    the released ones (the fp32 reference of 2 LSUN 256 images takes ~12-25 s on a CPU)."""
    return 16 if small_net(den.net) else 2


def fixed_input(den: Denoiser, device: torch.device, n: int = 2
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The check's input from a fixed seed: x [n, 3, R, R] f32, sigma [n] f32, labels [n] long
    (classes 0, 1, 2, ... or None). The first half is noise * sigma_max (one-step samples); the
    rest is a smooth image plus noise at sigmas from 0.1 to 10 (multistep sampling and editing;
    sigma 1 when there is one)."""
    r = int(den.image_size or den.net.config.sample_size)
    g = torch.Generator().manual_seed(20230301)
    noise = torch.randn(n, 3, r, r, generator=g)
    ramp = torch.linspace(-0.8, 0.8, r).view(1, 1, 1, r).expand(1, 3, r, r)
    half = n - n // 2
    mids = torch.logspace(-1, 1, n // 2) if n > 2 else torch.ones(n // 2)
    sig = torch.cat([torch.full((half,), float(den.sigma_max)), mids])
    x = noise * sig.view(-1, 1, 1, 1) + torch.cat([torch.zeros(half, 3, r, r), ramp.expand(n // 2, 3, r, r)])
    lab = torch.arange(n) % den.num_classes if den.class_cond else None
    return x.to(device), sig.to(device), (lab.to(device) if lab is not None else None)


def _pad(t: torch.Tensor | None, b: int) -> torch.Tensor | None:
    """Pad dim 0 to ``b`` rows by repeating the last row (valid sigmas and labels, finite images)."""
    if t is None or t.shape[0] == b:
        return t
    return torch.cat([t, t[-1:].expand(b - t.shape[0], *t.shape[1:])])


EXACT = "fp32 exact"  # the exact fp32 path: the planner's exact candidate and the info lines' name
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def short_dtype(dtype: torch.dtype) -> str:
    """"fp32", "bf16", "fp16" (else torch's name without the prefix)."""
    return next((k for k, v in _DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def variant_name(dtype: torch.dtype, channels_last: bool, compiled: bool = False) -> str:
    """A variant's name, e.g. "bf16 channels_last eager": the planner's candidates and the
    fast path's info lines say the same."""
    return f"{short_dtype(dtype)}{' channels_last' if channels_last else ''} {'compiled' if compiled else 'eager'}"


def exact_step(den: Callable[..., torch.Tensor], x: torch.Tensor, sig: torch.Tensor,
               labels: torch.Tensor | None) -> torch.Tensor:
    """``den`` (the fp32 :class:`~cm_core.models.denoiser.Denoiser`) with the fast path's step
    contract: x [B, C, H, W] and the result in float32, whatever dtype ``x`` came in."""
    return den(x.float(), sig, labels).float()


def describe_path(den: object, n: int) -> str:
    """Which path serves a batch of ``n`` on ``den`` and its measured error (the info lines)."""
    fn = getattr(den, "describe_path", None)
    if callable(fn):
        return str(fn(n))
    try:
        dtype = next(den.parameters()).dtype  # type: ignore[attr-defined]
    except (AttributeError, StopIteration):
        return "exact"
    return f"{short_dtype(dtype)} exact"


class SelfCheck:
    """Each fast variant of one network checks itself against exact fp32 the first time it would
    serve; :class:`cm_core.accel.fast.FastDenoiser` owns one.

    ``den``: the variant's :class:`Denoiser` (its fixed input's size); ``exact``: the fp32
    :class:`Denoiser`, or None when ``den`` itself is run exactly; ``step_for(compiled)``: the
    variant's step function (``fn(x, sigma, labels)``, f32 in and out); ``name_for(bucket,
    compiled)``: the variant's name in logs and info lines; ``enabled``: False trusts every
    variant. ``checks``: {(bucket, compiled): :class:`Check`}.
    """

    def __init__(self, den: Denoiser, exact: Denoiser | None, device: torch.device,
                 step_for: Callable[[bool], StepFn], name_for: Callable[[int, bool], str],
                 enabled: bool = True) -> None:
        self.den, self.exact, self.device = den, exact, device
        self.step_for, self.name_for, self.enabled = step_for, name_for, enabled
        self.checks: dict[tuple[int, bool], Check] = {}
        self._lock = threading.Lock()
        self._ref: tuple | None = None  # (fixed input, exact output), see _reference

    def is_exact(self, compiled: bool) -> bool:
        """fp32 eager without channels_last runs the exact Denoiser's numbers: nothing to check."""
        return self.exact is None and not compiled

    def ok(self, b: int, compiled: bool) -> bool:
        """Whether variant (bucket ``b``, ``compiled``) may serve; checks it the first time."""
        if not self.enabled or self.is_exact(compiled):
            return True
        key = (b, compiled)
        if key not in self.checks:
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return True  # never inside a capture (the warm-up run before it did the check)
            with self._lock:
                if key not in self.checks:
                    self.checks[key] = self._run(b, compiled)
        return self.checks[key].ok

    def _reference(self) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
        """The fixed input and the exact fp32 output on it, computed once for all variants."""
        if self._ref is None:
            inputs = fixed_input(self.den, self.device, check_images(self.den))
            with torch.no_grad():
                self._ref = (inputs, self.exact_step(*inputs).clamp(-1, 1))
        return self._ref

    def _run(self, b: int, compiled: bool) -> Check:
        (x, sig, lab), ref = self._reference()
        fn = self.step_for(compiled)
        outs = []
        with torch.no_grad():  # in batches of the bucket (padded), as the variant serves
            for i in range(0, x.shape[0], b):
                part = slice(i, i + b)
                n = x[part].shape[0]
                outs.append(fn(_pad(x[part], b), _pad(sig[part], b),
                               _pad(lab[part] if lab is not None else None, b))[:n])
        err, psnr = compare(torch.cat(outs), ref)
        c = Check(self.name_for(b, compiled), err, psnr, err <= MAX_ABS and psnr >= MIN_PSNR)
        (log.info if c.ok else log.warning)("%s self-check: %s", self.den.name or "model", c.describe())
        return c

    def exact_step(self, x: torch.Tensor, sig: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The exact fp32 path with the step's contract (f32 in, f32 out)."""
        return exact_step(self.exact if self.exact is not None else self.den, x, sig, labels)
