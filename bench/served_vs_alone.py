"""The served path against the candidates timed alone: is ``optimize(den)`` as fast as its plan?

    python bench/served_vs_alone.py cd_imagenet64_lpips --batch 1 --rounds 6

Plans the batch's bucket (``CM_PLAN=measure``; a stored plan is reused, ``CM_PLAN_CACHE``), then
times, in rounds whose order rotates: one one-step call of the served path (``generate.sample_batch``
on ``optimize(den)``) and one network call of each candidate that passed the plan's check (the
chosen one and the exact path among them), built afresh, on the check's input
(``cpu_interleaved.alone_calls``). Prints the plan and, per function, the median and the fastest ms/img.
Random weights of the released architectures (``bench.make_denoiser``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_denoiser, ours_call  # noqa: E402
from cpu_interleaved import alone_calls, settle_plans  # noqa: E402
from cm_core import optimize  # noqa: E402
from cm_core.models.registry import get_spec  # noqa: E402


def measure(name: str, batch: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` rounds after one warm-up round."""
    spec = get_spec(name)
    fast = optimize(make_denoiser(spec, torch.device("cpu")), warm_buckets=())
    if fast.planned is None:
        raise SystemExit("no planner here (CM_PLAN=off, or not a CPU): nothing to compare")
    settle_plans(fast, (batch,))
    ours = ours_call(fast, spec)
    fns = {"served (sample_batch)": lambda: ours(batch, 1), **alone_calls(fast, batch)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    with torch.no_grad():
        for r in range(rounds + 1):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                fns[k]()
                if r:
                    times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1, help="a batch bucket (1, 2, 4, 8, 16)")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    for k, v in measure(args.model, args.batch, args.rounds).items():
        print(f"{k:34s} median {1e3 * statistics.median(v) / args.batch:9.1f}  "
              f"fastest {1e3 * min(v) / args.batch:9.1f} ms/img", flush=True)


if __name__ == "__main__":
    main()
