"""OpenVINO beside our CPU fast path, on the same weights (measured before adding a dependency).

    pip install openvino            # not a dependency of cm-studio
    python bench/openvino_cpu.py --models cd_digits32,cd_imagenet64_lpips --batch 8

For each model: the one-step denoiser ``D(x, sigma_max)`` (scalings in float32 as in ours) is
converted once with ``openvino.convert_model`` and compiled for the CPU with
``INFERENCE_PRECISION_HINT`` f32 and bf16; beside it ours exact (fp32 eager) and ours fast
(``cm_core.optimize``). Prints ms at batch 1, img/s at ``--batch``, conversion + compile seconds,
and max abs / 8-bit PSNR of the clamped outputs vs ours exact on the same noise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import make_denoiser  # noqa: E402  (bench/bench.py, this folder)

from cm_core import optimize  # noqa: E402
from cm_core.accel.verify import compare  # noqa: E402
from cm_core.models.registry import get_spec  # noqa: E402


def _time(fn: Callable[[], object], iters: int) -> float:
    fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


class _Step(torch.nn.Module):
    def __init__(self, den: torch.nn.Module) -> None:
        super().__init__()
        self.den = den

    def forward(self, x: torch.Tensor, sig: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return self.den(x, sig, lab)


def openvino_fns(den: torch.nn.Module, x: torch.Tensor, sig: torch.Tensor, lab: torch.Tensor
                 ) -> tuple[dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]], float]:
    """{"openvino f32"|"openvino bf16": fn(x, sig, lab)} with dynamic batch, and convert seconds."""
    import openvino as ov
    t0 = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(_Step(den), example_input=(x, sig, lab))
    model.reshape({i: [-1, *list(p.get_partial_shape())[1:]] for i, p in enumerate(model.inputs)})
    convert_s = time.perf_counter() - t0
    core, out = ov.Core(), {}
    for prec in ("f32", "bf16"):
        comp = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": prec,
                                                 "INFERENCE_NUM_THREADS": torch.get_num_threads()})

        def run(x, sig, lab, comp=comp):
            return torch.from_numpy(comp([x.numpy(), sig.numpy(), lab.numpy()])[0].copy())
        out[f"openvino {prec}"] = run
    return out, convert_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cd_digits32,cd_imagenet64_lpips")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    print("| model | impl | ms @ b1 | img/s @ batch | setup s | max abs vs fp32 | PSNR dB |\n|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        spec = get_spec(name)
        den = make_denoiser(spec, torch.device("cpu"))
        r, n = spec.resolution, args.batch
        x = torch.randn(n, 3, r, r, generator=torch.Generator().manual_seed(0)) * spec.sigma_max
        sig = torch.full((n,), float(spec.sigma_max))
        lab = torch.arange(n) % (spec.arch.num_classes if spec.class_cond else 1)
        t0 = time.perf_counter()
        fast = optimize(den, copy=True)
        fns: dict = {"ours exact fp32": den, f"ours fast {str(fast.dtype)[6:]}": fast}
        setup = {f"ours fast {str(fast.dtype)[6:]}": time.perf_counter() - t0}
        ov_fns, conv = openvino_fns(den, x[:1], sig[:1], lab[:1])
        fns.update(ov_fns)
        setup.update({k: conv for k in ov_fns})
        with torch.no_grad():
            ref = den(x, sig, lab if spec.class_cond else None)
            for impl, fn in fns.items():
                call = (lambda m, fn=fn: fn(x[:m], sig[:m], lab[:m] if spec.class_cond else None)) \
                    if impl.startswith("ours") else (lambda m, fn=fn: fn(x[:m], sig[:m], lab[:m]))
                err, psnr = compare(call(n), ref)
                ms = 1e3 * _time(lambda: call(1), args.iters)
                ips = n / _time(lambda: call(n), max(1, args.iters // 2))
                print(f"| {name} | {impl} | {ms:.1f} | {ips:.2f} @ {n} | {setup.get(impl, 0):.1f} | "
                      f"{err:.1e} | {psnr:.1f} |", flush=True)


if __name__ == "__main__":
    main()
