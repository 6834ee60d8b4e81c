"""The CPU speed-up targets, measured interleaved: robust to a shared machine's drift.

    python bench/cpu_interleaved.py                    # embedded (b16), ImageNet 64 (b1, b8), LSUN 256 (b1)
    python bench/cpu_interleaved.py --models cd_imagenet64_lpips --rounds 7

``bench/bench.py`` measures each row in turn, so on a VM whose speed drifts by 10-25% within
minutes, rows measured minutes apart are not comparable. Here every round times one one-step call
of each implementation back to back, on the same weights and batch: diffusers' pipeline in fp32 and
in bf16 in a **child process** that never calls ``cm_core.optimize`` (glibc's default allocator, as
a user runs it), and ``cm_core.optimize`` (ours fast) in this process. It prints, per model and
batch, the median seconds of each and the median over rounds of the per-round speed-ups.

``--alone`` adds, to every round, one network call of each candidate that passed the planner's
check, built afresh and timed by itself on the check's input (``cm_core.accel.candidates``): the
last two columns then give the fastest of them and how the served path compares (the target:
within 5%).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import diffusers_call, make_denoiser, ours_call  # noqa: E402
from cm_core import optimize  # noqa: E402
from cm_core.accel.candidates import candidates  # noqa: E402
from cm_core.accel.verify import fixed_input  # noqa: E402
from cm_core.accel.fast import bucket_for, pick_dtype  # noqa: E402
from cm_core.models.registry import get_spec  # noqa: E402

PLAN = {"cd_digits32": (16,), "cd_imagenet64_lpips": (1, 8), "cd_bedroom256_lpips": (1,)}


def _seconds(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def diffusers_worker(name: str, threads: int, conn) -> None:
    """Child: diffusers fp32 and bf16 on the bench's weights of ``name``; answers ("fp32"|"bf16",
    batch) with the seconds of one one-step call, until None."""
    torch.set_num_threads(threads)
    spec = get_spec(name)
    den = make_denoiser(spec, torch.device("cpu"))
    cpu = torch.device("cpu")
    fns = {dt: diffusers_call(den, spec, pick_dtype(cpu, dt), cpu) for dt in ("fp32", "bf16")}
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        dt, batch = msg
        conn.send(_seconds(fns[dt], batch, 1))


def settle_plans(fast, batches: tuple[int, ...]) -> None:
    """Let the planner choose each batch's variant now (``CM_PLAN``, default ``measure``): the
    rounds then time what ``optimize`` serves once planned. Prints each plan and its cost."""
    if fast.planned is None:
        print(f"{fast.name}: no planner (CM_PLAN=off or an explicit dtype); the fixed plan serves", flush=True)
        return
    t0 = time.perf_counter()
    plans = fast.planned.plan_now([bucket_for(b, fast.buckets) for b in batches])
    print(f"{fast.name}: planned {sorted(plans)} in {time.perf_counter() - t0:.0f} s", flush=True)
    for plan in plans.values():
        print(plan.table(), flush=True)


def alone_calls(fast, batch: int) -> dict[str, object]:
    """One network call of each candidate that passed the plan of ``batch``'s bucket, by name
    ("alone: NAME"), each built afresh on the check's input of ``batch`` images."""
    if fast.planned is None:
        return {}
    plan = fast.planned.plan_now([bucket_for(batch, fast.buckets)]).get(bucket_for(batch, fast.buckets))
    passed = {t.name for t in plan.trials if t.ok and t.ms_per_img is not None} if plan else set()
    exact = fast.exact if fast.exact is not None else fast.den
    inputs = fixed_input(exact, torch.device("cpu"), batch)
    out = {}
    for c in candidates(exact):
        if c.name in passed:
            step = c.build()
            out[f"alone: {c.name}"] = lambda step=step: step(*inputs)
    return out


def _alone_cells(med: dict[str, float], batch: int) -> str:
    alone = {k: v for k, v in med.items() if k.startswith("alone: ")}
    if not alone:
        return "- | - |"
    best = min(alone, key=alone.get)
    return f"{1e3 * alone[best] / batch:.1f} ({best[7:]}) | {alone[best] / med['ours']:.2f}x |"


def interleave(name: str, rounds: int, dtypes: tuple[str, ...] = ("fp32", "bf16"),
               batches: tuple[int, ...] | None = None, alone: bool = False) -> list[str]:
    """Rounds of (diffusers in each of ``dtypes``, ours fast) per batch; Markdown rows. Leave bf16
    out on a CPU without bf16 kernels, where diffusers bf16 is emulated (7-10x slower than fp32)."""
    spec = get_spec(name)
    batches = batches or PLAN.get(name, (1,))
    fast = optimize(make_denoiser(spec, torch.device("cpu")), warm_buckets=())
    settle_plans(fast, batches)  # before the child starts: its start-up would disturb the timings
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=diffusers_worker, args=(name, torch.get_num_threads(), child), daemon=True)
    proc.start()
    ours = ours_call(fast, spec)
    assert parent.recv() == "ready"
    rows = []
    for batch in batches:
        solo = alone_calls(fast, batch) if alone else {}
        times: dict[str, list[float]] = {dt: [] for dt in (*dtypes, "ours", *solo)}
        for r in range(rounds + 1):  # round 0 warms up (first calls, the self-check)
            for dt in dtypes:
                parent.send((dt, batch))
                s = parent.recv()
                if r:
                    times[dt].append(s)
            s = _seconds(ours, batch, 1)
            if r:
                times["ours"].append(s)
            with torch.no_grad():
                for key, call in solo.items():
                    s = _seconds(call)
                    if r:
                        times[key].append(s)
        med = {k: statistics.median(v) for k, v in times.items()}
        up = {dt: statistics.median(a / b for a, b in zip(times[dt], times["ours"])) for dt in dtypes}
        ms = {dt: f"{1e3 * med[dt] / batch:.1f}" if dt in med else "-" for dt in ("fp32", "bf16")}
        x = {dt: f"{up[dt]:.2f}x" if dt in up else "-" for dt in ("fp32", "bf16")}
        rows.append(f"| {name} | {batch} | {rounds} | {ms['fp32']} | {ms['bf16']} | "
                    f"{1e3 * med['ours'] / batch:.1f} | {x['fp32']} | {x['bf16']} | {fast.describe_path(batch)} | "
                    f"{_alone_cells(med, batch)}")
        print(rows[-1], flush=True)
    parent.send(None)
    proc.join(timeout=60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(PLAN), help="comma list")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per batch (after one warm-up)")
    ap.add_argument("--diffusers", default="fp32,bf16",
                    help="diffusers dtypes to time (leave bf16 out where the CPU has no bf16 kernels)")
    ap.add_argument("--batches", default="", help="comma list for every model (default: per model)")
    ap.add_argument("--alone", action="store_true",
                    help="also time each candidate that passed the plan's check by itself, every round")
    args = ap.parse_args()
    dtypes = tuple(d for d in args.diffusers.split(",") if d)
    batches = tuple(int(b) for b in args.batches.split(",") if b) or None
    out = ["| model | batch | rounds | diffusers fp32 ms/img | diffusers bf16 ms/img | ours fast ms/img | "
           "x diffusers fp32 | x diffusers bf16 | path | fastest candidate alone ms/img | it / ours |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        out += interleave(name, args.rounds, dtypes, batches, args.alone)
    print(f"\none step, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
