"""Benchmark: our fast path vs diffusers' ``ConsistencyModelPipeline``, same process, same weights.

    python bench/bench.py --device cuda            # ImageNet 64 and LSUN 256 (random weights)
    python bench/bench.py --device cpu             # embedded 32px model, ImageNet 64 (b1, b8), LSUN 256 (b1)

Every row samples with the same ``UNet2DModel`` weights. "diffusers" is
``ConsistencyModelPipeline`` + ``CMStochasticIterativeScheduler`` (``output_type="pt"``);
"exact" is our fp32 :class:`~cm_core.models.denoiser.Denoiser`; "fast" is :func:`cm_core.accel.entry.optimize`
(CUDA: fp16, channels_last, torch.compile max-autotune-no-cudagraphs, whole-call CUDA graphs;
CPU: bf16 + channels_last eager with chunked attention for the released nets where bf16 is native,
fp32 + channels_last for the embedded one, a tuned allocator; ``--compile on`` adds Inductor with
freezing). The half-precision diffusers row is fp16 on CUDA
and bf16 on CPU (pipeline cast with ``.to(dtype)``). Columns: ms at batch 1, img/s at the large
batch, peak GPU memory, compile seconds (blocking compilation of the buckets used), first-call ms
(the first batch-1 call after setup: lazy inits, and for the fast rows its self-check against fp32),
speed-up over diffusers fp32 and over the best diffusers row of the same model and steps, fraction
of the compute limit (FLOPs per image / the device's dense fp16 tensor peak), and max abs vs fp32
of the same code (diffusers half vs diffusers fp32, ours fast vs ours exact) on the same noise, 2
images, final [-1, 1] images. Prints a Markdown table (paste it into bench/RESULTS.md).

On CPU the "diffusers fp32/bf16" rows run first, before any ``optimize`` call, i.e. with glibc's
default allocator, as a user runs the pipeline; ``optimize`` then tunes the process's allocator
(:mod:`cm_core.accel.cpu_malloc`), and diffusers is measured once more in it ("(tuned malloc)"
rows). The speed-up columns are against the default-allocator rows.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cm_core import optimize  # noqa: E402
from cm_core.accel.fast import pick_dtype, timed  # noqa: E402
from cm_core.models.denoiser import Denoiser  # noqa: E402
from cm_core.models.network import build_unet  # noqa: E402
from cm_core.models.registry import IMAGENET64, LSUN256, ArchSpec, ModelSpec, get_spec  # noqa: E402
from cm_core.sampling.generate import SampleSettings, labels_for, sample_batch  # noqa: E402

DIFFUSERS = ("diffusers fp32", "diffusers fp16", "diffusers bf16")  # the ratios' reference rows
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "4090": 165.0}
PARAMS = {IMAGENET64: 295_899_267, LSUN256: 526_304_771}


@dataclass
class Row:
    model: str
    steps: int
    impl: str
    ms_b1: float | None = None
    ips: float | None = None
    batch: int = 0
    mem_gib: float | None = None
    compile_s: float | None = None
    first_ms: float | None = None
    err: float | None = None
    flops: float = 0.0


def flops_per_image(arch: ArchSpec) -> float:
    """Forward FLOPs of one image (2 per multiply-add), counted on the meta device (free)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        net = build_unet(arch)
        x, t = torch.zeros(1, 3, arch.image_size, arch.image_size), torch.zeros(1)
        lab = torch.zeros(1, dtype=torch.long) if arch.class_cond else None
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x, t, class_labels=lab)
    return float(fc.get_total_flops())


def measure(fn: Callable[[], object], device: torch.device, iters: int) -> tuple[float, float]:
    """(median seconds of ``fn`` over ``iters`` runs after one warm-up run, the warm-up's seconds)."""
    with timed(device) as first:
        fn()
    times = []
    for _ in range(iters):
        with timed(device) as t:
            fn()
        times.append(t["s"])
    return statistics.median(times), first["s"]


def make_denoiser(spec: ModelSpec, device: torch.device) -> Denoiser:
    """The registry model if its file is on disk (embedded models), else random weights."""
    from cm_core.models.checkpoints import is_available, load_denoiser
    if spec.embedded and is_available(spec):
        return load_denoiser(spec.name, device=device)
    torch.manual_seed(0)
    net = build_unet(spec.arch)
    n = sum(p.numel() for p in net.parameters())
    if spec.arch in PARAMS and n != PARAMS[spec.arch]:
        raise SystemExit(f"{spec.name}: {n} parameters, expected {PARAMS[spec.arch]}")
    return Denoiser(net, spec.kind, num_classes=spec.arch.num_classes if spec.class_cond else None,
                    image_size=spec.resolution, name=spec.name).to(device).eval()


def diffusers_call(den: Denoiser, spec: ModelSpec, dtype: torch.dtype, device: torch.device
                   ) -> Callable[[int, int], torch.Tensor]:
    """``run(batch, steps)`` with diffusers' pipeline on a copy of ``den``'s UNet in ``dtype``."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline
    sched = CMStochasticIterativeScheduler(num_train_timesteps=spec.grid_size, sigma_min=spec.sigma_min,
                                           sigma_max=spec.sigma_max)
    pipe = ConsistencyModelPipeline(unet=copy.deepcopy(den.net), scheduler=sched).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)

    def run(batch: int, steps: int) -> torch.Tensor:
        lab = torch.arange(batch, device=device) % spec.arch.num_classes if spec.class_cond else None
        kw = {"num_inference_steps": 1} if steps == 1 else {"timesteps": [spec.ts[1], 0],
                                                            "num_inference_steps": None}
        return pipe(batch_size=batch, class_labels=lab, generator=torch.Generator(device).manual_seed(0),
                    output_type="pt", **kw).images
    return run


def ours_call(den: Denoiser, spec: ModelSpec) -> Callable[[int, int], torch.Tensor]:
    """``run(batch, steps)`` through ``generate.sample_batch`` (per-image seeds, as the app/CLI)."""
    def run(batch: int, steps: int) -> torch.Tensor:
        seeds = list(range(batch))
        return sample_batch(den, spec, seeds, SampleSettings(num_evals=steps),
                            labels_for(spec, seeds, None))
    return run


def max_err(fast: Callable, exact: Callable, steps: int) -> float:
    return (fast(2, steps).float() - exact(2, steps).float()).abs().max().item()


def editing_call(den: Denoiser, spec: ModelSpec) -> Callable[[int, int], torch.Tensor]:
    """``run(batch, steps)``: inpainting (Algorithm 4, cm_core.editing) of a half-masked image."""
    from cm_core import editing
    from cm_core.sampling import initial_noise, make_generators
    r = spec.resolution
    dev = next(den.parameters()).device

    def run(batch: int, steps: int) -> torch.Tensor:
        gens = make_generators(0, batch, dev)
        x = initial_noise((batch, 3, r, r), gens, spec.sigma_max, device=dev)
        images = torch.zeros(batch, 3, r, r, device=dev)
        mask = torch.zeros(r, r, device=dev)
        mask[:, : r // 2] = 1
        lab = labels_for(spec, list(range(batch)), None)
        with torch.no_grad():
            return editing.inpaint(den, images, mask, x, list(spec.ts), spec.grid_size, gens, lab)
    return run


def _weights_gib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2 ** 30


def run_row(row: Row, fn: Callable[[int, int], torch.Tensor], device: torch.device, iters: int,
            weights_gib: float, batch1: bool = True) -> Row:
    """Fill ``row``'s latency, throughput and (CUDA) peak memory for ``fn``."""
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if batch1:
        med, first = measure(lambda: fn(1, row.steps), device, iters)
        row.ms_b1, row.first_ms = 1e3 * med, 1e3 * first
    if row.batch > 1:
        row.ips = row.batch / measure(lambda: fn(row.batch, row.steps), device, max(3, iters // 2))[0]
    if cuda:
        row.mem_gib = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 30 + weights_gib
    print(f"  {row.model} {row.steps}-step {row.impl}: b1 {row.ms_b1} ms, {row.ips} img/s", flush=True)
    return row


def diffusers_rows(spec: ModelSpec, device: torch.device, big: int, steps_list: tuple[int, ...],
                   iters: int, den: Denoiser | None = None, label: str = "", batch1: bool = True
                   ) -> list[Row]:
    """diffusers' pipeline in fp32 and fp16 (CUDA) / bf16 (CPU) on ``den`` (default: the bench's
    weights of ``spec``). The half-precision row's error is against the fp32 pipeline."""
    den = den if den is not None else make_denoiser(spec, device)
    half = "fp16" if device.type == "cuda" else "bf16"
    d32 = diffusers_call(den, spec, torch.float32, device)
    d16 = diffusers_call(den, spec, pick_dtype(device, half), device)
    rows, flops = [], flops_per_image(spec.arch)
    for steps in steps_list:
        for name, fn, gib in ((f"diffusers fp32{label}", d32, _weights_gib(den)),
                              (f"diffusers {half}{label}", d16, _weights_gib(den) / 2)):
            row = Row(spec.name, steps, name, batch=big, flops=flops)
            if fn is d16:
                row.err = max_err(d16, d32, steps)
            rows.append(run_row(row, fn, device, iters, gib, batch1))
    return rows


def bench_model(spec: ModelSpec, device: torch.device, big: int, steps_list: tuple[int, ...],
                iters: int, batch1: bool = True, edit: bool = True, compile: bool | str = "auto",
                untuned: list[Row] | None = None) -> list[Row]:
    """All rows of one model: diffusers fp32 and fp16 (CUDA) / bf16 (CPU), exact fp32, fast
    (``cm_core.optimize``); plus editing. Errors: max abs vs the fp32 row of the same code.
    ``untuned``: diffusers rows measured before this process's allocator was tuned (CPU); the
    diffusers rows measured here are then labelled "(tuned malloc)"."""
    den = make_denoiser(spec, device)
    flops = flops_per_image(spec.arch)
    with timed(device) as t:  # every bucket the rows use (max_err samples 2), so no compile overlaps a timing
        fast = optimize(den, copy=True, compile=compile, warm_buckets=(1, 2, big))
        fast.wait()
    compile_s = t["s"] if fast.compiled_step is not None else None
    label = " (tuned malloc)" if untuned is not None else ""
    rows = (untuned or []) + diffusers_rows(spec, device, big, steps_list, iters, den, label, batch1)
    exact = ours_call(den, spec)
    for steps in steps_list:
        for name, d in (("ours exact fp32", den), (f"ours fast {str(fast.dtype)[6:]}", fast)):
            row = Row(spec.name, steps, name, batch=big, flops=flops)
            fn = exact if d is den else ours_call(fast, spec)
            if d is fast:
                row.compile_s, row.err = compile_s, max_err(fn, exact, steps)
            rows.append(run_row(row, fn, device, iters, _weights_gib(d), batch1))
    if edit:
        ne = len(spec.ts) - 1
        for name, d in (("edit: inpaint exact fp32", den), ("edit: inpaint fast", fast)):
            rows.append(run_row(Row(spec.name, ne, name, batch=big, flops=flops),
                                editing_call(d, spec), device, iters, _weights_gib(d), batch1))
    st = fast.stats
    print(f"  {spec.name} fast path: compile {st['compile_s']}, graph replays {st['graph_replays']}, "
          f"deferred {st['graph_deferred']}, compile error {st['compile_error']}, "
          f"graph error {st['graph_error']}, exact calls {st['exact_calls']}", flush=True)
    for n in sorted({1, 2, big}):
        print(f"  batch {n}: {fast.describe_path(n)}", flush=True)
    if device.type == "cuda":  # the planner's table of the CUDA candidates (fp16/bf16: eager, compiled, graphed)
        from cm_core.accel.candidates import plan_denoiser
        for n in (1, big):
            print(plan_denoiser(den, n, compile=compile is not False).table(), flush=True)
    return rows


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ratios(r: Row, ref: list[Row]) -> str:
    """Speed-up of ``r`` over the fastest of ``ref`` at batch 1 and at the large batch."""
    b1 = min((x.ms_b1 for x in ref if x.ms_b1), default=None)
    ips = max((x.ips for x in ref if x.ips), default=None)
    return (f"{_f(b1 / r.ms_b1 if b1 and r.ms_b1 else None, '.2f')} / "
            f"{_f(r.ips / ips if ips and r.ips else None, '.2f')}")


def table(rows: list[Row], peak: float | None) -> str:
    """Markdown table; ratios against the best diffusers row of the same model and steps."""
    out = ["| model | steps | impl | ms @ b1 | img/s @ batch | peak GiB | compile s | first call ms | "
           "x diffusers fp32 (b1 / batch) | x best diffusers (b1 / batch) | % of limit (b1 / batch) | max abs vs fp32 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = [x for x in rows if x.model == r.model and x.steps == r.steps and x.impl in DIFFUSERS
               and not r.impl.startswith("edit")]  # diffusers has no editing: no ratio there
        sp = [_ratios(r, [x for x in ref if x.impl == "diffusers fp32"]), _ratios(r, ref)]
        lim = "-"
        if peak:
            lim_ms = 1e3 * r.flops * r.steps / (peak * 1e12)
            lim = (f"{_f(100 * lim_ms / r.ms_b1 if r.ms_b1 else None, '.1f')} / "
                   f"{_f(100 * r.ips * lim_ms / 1e3 if r.ips else None, '.1f')}")
        out.append(f"| {r.model} | {r.steps} | {r.impl} | {_f(r.ms_b1, '.1f')} | "
                   f"{_f(r.ips, '.2f')} @ {r.batch} | {_f(r.mem_gib, '.2f')} | {_f(r.compile_s, '.0f')} | "
                   f"{_f(r.first_ms, '.0f')} | {sp[0]} | {sp[1]} | {lim} | {_f(r.err, '.1e')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=None, help="timed runs per point (default 20 GPU, 3 CPU)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="the fast rows' compilation (default: what cm_core.optimize picks)")
    ap.add_argument("--models", default=None, help="comma list (default: by device)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    iters = args.iters
    plan = ({"cd_imagenet64_lpips": (256, (1, 2), True), "cd_bedroom256_lpips": (32, (1, 2), True)}
            if cuda else {"cd_digits32": (16, (1, 2), True), "cd_imagenet64_lpips": (8, (1, 2), True),
                          "cd_bedroom256_lpips": (1, (1,), False)})
    if args.models:
        plan = {m: plan.get(m, (16, (1,), False)) for m in args.models.split(",")}
    rows = []
    its = {name: iters or (20 if cuda else 10 if get_spec(name).embedded else 2) for name in plan}
    # CPU: diffusers as a user runs it, before optimize() tunes this process's allocator
    untuned = {name: diffusers_rows(get_spec(name), dev, big, steps, its[name])
               for name, (big, steps, _) in plan.items()} if not cuda else {}
    for name, (big, steps, edit) in plan.items():
        print(f"{name}: FLOPs/image {flops_per_image(get_spec(name).arch) / 1e9:.1f} G", flush=True)
        comp = {"auto": "auto", "on": True, "off": False}[args.compile]
        rows += bench_model(get_spec(name), dev, big, steps, its[name], edit=edit, compile=comp,
                            untuned=untuned.get(name))
    what = torch.cuda.get_device_name(dev) if cuda else f"{platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} threads"
    print(f"\n{what}; torch {torch.__version__}; {datetime.date.today()}\n")
    print(table(rows, peak_tflops(dev)))


if __name__ == "__main__":
    main()
