#!/usr/bin/env python
"""Reliability figures for docs/RELIABILITY.md: hostile inputs and a concurrent burst, through the API.

Starts ``python app.py`` on a loopback port (random-weight embedded models, a scratch checkpoint
directory seeded with hostile checkpoint files; see ``tests/app_server.py``), then

1. sends every case of ``hostile_inputs.matrix`` (hostile uploads, out-of-range parameters, hostile
   checkpoints) one by one through ``gradio_client`` and records the outcome and the message;
2. sends ``--requests`` (50) concurrent requests of mixed kinds from a thread pool, each with a
   timeout, while sampling the server's resident memory (RSS) with psutil;
3. checks that the app still answers, and prints a markdown report (``--out``: also writes it).

    CM_TORCH_THREADS=1 .venv/bin/python scripts/reliability_report.py --out docs/RELIABILITY.md

The cases live in ``scripts/hostile_inputs.py``, the burst, queue check and soak in
``scripts/load_runs.py``; ``tests/test_reliability.py`` and ``tests/test_load.py`` run them too.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from hostile_inputs import PWNED, PX, Case, Outcome, gen_args, make_uploads, matrix, run_case, seed_checkpoints  # noqa: E402
from load_runs import BurstResult, burst, mb, queue_full_check, soak, soak_markdown  # noqa: E402


# ----------------------------------------------------------------------------- report
def markdown(outcomes: list[Outcome], b: BurstResult | None, q: Counter | None, pwned: bool,
             start_s: float, cmd: str) -> str:
    import gradio
    import torch

    from cm_core.accel.cpu import cpu_description
    tried = len(outcomes)
    good = sum(o.as_expected for o in outcomes)
    crashes = [o for o in outcomes if not o.as_expected]
    lines = [
        f"Measured with `{cmd}` on {platform.machine()} Linux, {os.cpu_count()} CPU cores (shared, {cpu_description()}), "
        f"Python {platform.python_version()}, torch {torch.__version__}, gradio {gradio.__version__}; "
        f"the app on 127.0.0.1 with random-weight embedded models (32 px), "
        f"`CM_TORCH_THREADS={os.environ.get('CM_TORCH_THREADS', '1')}`, app start {start_s:.1f} s.",
        "",
        f"**Hostile inputs: {tried} tried, {good} handled as specified** (valid-but-odd inputs give "
        f"{PX}x{PX} results; the others a clear message), {len(crashes)} not"
        + (f" ({', '.join(o.case.name for o in crashes)})" if crashes else "")
        + f"; the pickled callable ran: **{'YES' if pwned else 'no'}**; the server never went down.",
        "",
        "| # | kind | input | endpoint | outcome | message / info | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, 1):
        status = ("ok" if o.succeeded else "clear error") if o.as_expected else "UNEXPECTED"
        msg = o.message.replace("|", "\\|")
        msg = msg if len(msg) <= 160 else msg[:157] + "..."
        lines.append(f"| {i} | {o.case.kind} | {o.case.name} | `{o.case.api}` | {status} | {msg} | {o.seconds:.2f} |")
    if b is not None:
        lines += [
            "",
            f"**Load: {b.requests} concurrent requests** (a thread pool of {b.requests}, all released together, "
            "mixed endpoints, one in ten invalid on purpose), each with a 60 s timeout:",
            "",
            "| requests | served | ok | clear error (expected) | queue full | timeouts | failures | "
            "p50 latency | p95 latency | max latency | wall | RSS before | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {b.requests} | {b.served} | {b.outcomes['ok']} | {b.outcomes['clear error']} | "
            f"{b.outcomes['queue full']} | {b.outcomes['timeout']} | {b.outcomes['failure']} | "
            f"{b.pct(0.5):.2f} s | {b.pct(0.95):.2f} s | {max(b.latencies):.2f} s | {b.wall:.1f} s | "
            f"{mb(b.rss_baseline)} | {mb(b.rss_peak)} |",
            "",
            "Per kind: " + "; ".join(f"{k}: " + ", ".join(f"{v} {s}" for s, v in c.items())
                                     for k, c in b.by_kind.items()) + ".",
        ]
        if b.failures:
            lines += ["", "Failures: " + "; ".join(f"{k}: {m}" for k, m in b.failures)]
    if q is not None:
        lines += ["", f"**Queue bound**: a server started with `CM_QUEUE_SIZE=2` given "
                  f"{sum(q.values())} simultaneous 39-step requests: "
                  + ", ".join(f"{v} {k}" for k, v in q.items())
                  + " (Gradio's message: \"Queue is full! Please try again.\")."]
    return "\n".join(lines) + "\n"


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-queue-check", action="store_true")
    ap.add_argument("--soak-rounds", type=int, default=10, help="rounds of the memory soak (0: none)")
    ap.add_argument("--soak-requests", type=int, default=40, help="concurrent requests per soak round")
    ap.add_argument("--soak-batch", type=int, default=16, help="images per soak request")
    ap.add_argument("--soak-only", action="store_true", help="only the soak (no matrix, burst, queue check)")
    ap.add_argument("--out", type=Path, help="also write the report here (markdown)")
    return ap.parse_args(argv)


def _hostile_and_burst(tmp: Path, a: argparse.Namespace) -> tuple[str, bool]:
    """The matrix, the burst and the queue check; (their report, whether all went as expected)."""
    from app_server import AppServer
    from gradio_client import Client
    files = make_uploads(tmp / "uploads")
    seed_checkpoints(tmp / "app" / "checkpoints")
    srv = AppServer(tmp / "app", {"CM_CACHE_EXAMPLES": "0"})
    try:
        client = Client(srv.url, verbose=False)
        outcomes = []
        for c in matrix(files, tmp / "app" / "checkpoints", tmp / "app" / "embedded"):
            o = run_case(client, c, a.timeout)
            outcomes.append(o)
            print(f"{'ok ' if o.as_expected else 'BAD'} {c.kind:10s} {c.name:50s} {o.message[:90]}", flush=True)
        pwned = (tmp / "app" / "checkpoints" / PWNED).exists()
        b = burst(srv.url, srv.proc.pid, files, a.requests, a.timeout)
        print(f"burst: {dict(b.outcomes)} in {b.wall:.1f} s, peak RSS {mb(b.rss_peak)}", flush=True)
        run_case(client, Case("recovery", "after the burst", "/generate", lambda: gen_args()))
        assert srv.proc.poll() is None, "the server died"
        start_s = srv.start_seconds
    finally:
        srv.stop()
    q = None if a.no_queue_check else queue_full_check(tmp / "queue")
    cmd = "CM_TORCH_THREADS=1 .venv/bin/python scripts/reliability_report.py" + (
        f" --requests {a.requests}" if a.requests != 50 else "")
    ok = all(o.as_expected for o in outcomes) and not pwned and not b.failures
    return markdown(outcomes, b, q, pwned, start_s, cmd), ok


def _soak(tmp: Path, a: argparse.Namespace) -> tuple[str, bool]:
    """The memory soak on a fresh server; (its report, whether it was flat and failed nothing)."""
    from app_server import AppServer
    srv = AppServer(tmp / "soak", {"CM_CACHE_EXAMPLES": "0"})
    try:
        s = soak(srv.url, srv.proc.pid, a.soak_rounds, a.soak_requests, a.soak_batch, max(a.timeout, 300.0))
    finally:
        srv.stop()
    ok = s.last_spread() <= 0.10 and not any(r[2] for r in s.rounds)
    return soak_markdown(s, a.soak_requests, a.soak_batch), ok


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    os.environ.setdefault("CM_TORCH_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    parts, ok = [], True
    with tempfile.TemporaryDirectory(prefix="cm-reliability-") as d:
        if not a.soak_only:
            report, ok = _hostile_and_burst(Path(d), a)
            parts.append(report)
        if a.soak_rounds > 0:
            report, soak_ok = _soak(Path(d), a)
            parts.append(report)
            ok = ok and soak_ok
    report = "\n\n".join(parts)
    print(report)
    if a.out:
        a.out.write_text(_doc(report))
    return 0 if ok else 1


def _doc(report: str) -> str:
    return f"""# Reliability and security

What a public deployment gets thrown at it, and what the app does. The figures below come from
`scripts/reliability_report.py`, which starts the app on a loopback port and drives it through
`gradio_client`; `tests/test_reliability.py` and `tests/test_load.py` assert the same behaviour.

**Checkpoints.** Original `.pt` files are read with `torch.load(weights_only=True)`: a pickled
callable is refused before anything runs. Truncated, corrupt or wrong-architecture files and
safetensors headers that lie about sizes give an error naming the file and the fix; a model that
fails to load is not cached (fix the file and the next request loads it) and the other models keep
serving. Downloads go to `<name>.pt.part`, are checked against the server's length and the
registry's size / sha256 where recorded, and only then renamed.

**Uploads.** Every upload is checked from its header before Gradio decodes it: anything that is not
an image, and anything over Pillow's pixel limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89.5 Mpx:
decompression bombs), is refused at once with a message. The library converts every mode itself
(16-bit rescaled, CMYK, palette, alpha composited on white, first frame of animations); masks that
are empty, cover everything or have another size get a message saying what to paint.

**Parameters and limits.** Steps, ts (at most {200} evaluations per image, on any grid), Heun steps
(<= 200), batch size (<= `CM_MAX_BATCH`, default 16, so one request cannot take all GPU memory),
seed, dropout (<= 0.9), patch size (must divide the model size), noise level, frames and sigma are
validated by the UI components and again by `cm_core.service`. Text fields are refused by length
before they are parsed (a 20 MB `ts` in 0.25 s), every message quotes at most 200 characters of
input, and every error reply and log line is cut to 1000 characters. The queue holds at most
`CM_QUEUE_SIZE` (64) waiting requests; beyond that a request gets "Queue is full" at once. Model
runs take one of `CM_CONCURRENCY` compute slots (default 1); `CM_WAITERS` (8) more requests wait
past the queue for a download or a slot, with a progress message saying which.

**Clients that leave, Hubs that hang.** A request whose client presses Stop, cancels or drops its
connection stops at its next progress call (one network evaluation; two for a Heun step) and frees
its slot: the next request starts at once (`tests/test_cancel.py`). A model download runs in a
background job of its own, joined by every visitor of that model, with a connection timeout
(`CM_HUB_TIMEOUT_S`, 20 s) and a deadline (`CM_FETCH_DEADLINE_S`, 30 min): a Hub that accepts and
never answers, or that cuts the transfer, fails the fetch with its cause while the embedded models
are served in normal time, and nothing complete-looking is left (`tests/test_hub_faults.py`).

**Memory.** When the compute slots have been idle for a second the allocator's free memory goes back
to the system (glibc `malloc_trim`), and Gradio's cached output files older than an hour are deleted
hourly. The soak below shows the server's RSS round after round.

**Faults.** A CUDA out-of-memory error during a request evicts the other cached models, empties
the CUDA cache and retries once; if it fails again the user gets "out of GPU memory ...: use a
smaller batch size" and the next request runs normally.

## Measured

{report}
"""


if __name__ == "__main__":
    sys.exit(main())
