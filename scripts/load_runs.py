"""Load on the app, through its API: a burst of concurrent mixed requests, the queue bound and a
memory soak, with the server's resident memory sampled throughout.

``scripts/reliability_report.py`` reports them in docs/RELIABILITY.md; ``tests/test_load.py`` and
``tests/test_reliability.py`` run them small.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from hostile_inputs import MODEL, check_result, editor_value, gen_args, matches  # noqa: E402

QUEUE_FULL = "queue is full"


# ----------------------------------------------------------------------------- the burst
class RssSampler:
    """Peak resident memory of a process and its children, sampled every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        import psutil
        self.proc = psutil.Process(pid)
        self.period = period
        self.baseline = self.current()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        import psutil
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def burst_requests(f: dict[str, str], n: int = 50) -> list[tuple[str, str, Callable[[], tuple], tuple[str, ...]]]:
    """``n`` mixed requests (kind, api, args, expected error needles or ()), one in ten invalid."""
    from gradio_client import handle_file as h
    kinds = [
        ("generate", "/generate", lambda i: gen_args(seed=i, batch=2), ()),
        ("generate (batched)", "/generate", lambda i: gen_args(seed=100 + i, batch=1), ()),
        ("generate_steps", "/generate_steps", lambda i: gen_args(steps=2, seed=i, batch=2, cls=str(i % 10)), ()),
        ("colorize", "/colorize", lambda i: (MODEL, h(f["photo"]), 2, "", i, "random"), ()),
        ("inpaint", "/inpaint", lambda i: (MODEL, editor_value(f["photo"], [f["mask"]]), 2, "", i, "random"), ()),
        ("super_resolve", "/super_resolve", lambda i: (MODEL, h(f["photo"]), False, 4, 2, "", i, "random"), ()),
        ("denoise", "/denoise", lambda i: (MODEL, h(f["photo"]), 40, True, 1, i, "random"), ()),
        ("interpolate", "/interpolate", lambda i: (MODEL, "seeds", i, i + 1, None, None, 4, 1, "", "random"), ()),
        ("stroke_guided", "/stroke_guided", lambda i: (MODEL, editor_value(f["palette"]), 4.0, 2, i, "random"), ()),
        ("invalid (non-image upload)", "/colorize", lambda i: (MODEL, h(f["not_an_image"]), 2, "", i, "random"),
         ("could not read",)),
    ]
    return [(k, api, (lambda i=i, a=a: a(i)), exp) for i in range(n) for k, api, a, exp in [kinds[i % len(kinds)]]]


@dataclass
class BurstResult:
    requests: int
    outcomes: Counter = field(default_factory=Counter)   # ok | clear error | queue full | timeout | failure
    by_kind: dict = field(default_factory=dict)
    latencies: list = field(default_factory=list)        # seconds, every request
    failures: list = field(default_factory=list)         # (kind, message)
    wall: float = 0.0
    rss_baseline: int = 0
    rss_peak: int = 0

    @property
    def served(self) -> int:
        return self.outcomes["ok"] + self.outcomes["clear error"]

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def burst(url: str, pid: int, f: dict[str, str], n: int = 50, timeout: float = 60.0) -> BurstResult:
    """``n`` concurrent mixed requests from a thread pool of ``n`` workers, each waiting at most
    ``timeout`` seconds (then cancelled); the server's RSS is sampled throughout."""
    from gradio_client import Client
    client = Client(url, verbose=False, max_workers=max(40, n + 8))
    reqs = burst_requests(f, n)
    res = BurstResult(n)
    lock = threading.Lock()
    start = threading.Barrier(n)

    def one(item) -> None:
        kind, api, args, expect = item
        start.wait(timeout)  # all in flight together
        t = time.perf_counter()
        job = None
        try:
            job = client.submit(*args(), api_name=api)
            out = job.result(timeout=timeout)
            check_result(api, out)
            status, msg = ("ok", "") if not expect else ("failure", "succeeded but should have failed")
        except TimeoutError:
            status, msg = "timeout", f"no answer in {timeout:.0f} s"
            if job is not None:
                job.cancel()
        except Exception as e:  # noqa: BLE001
            msg = " ".join(str(e).split()) or type(e).__name__
            if QUEUE_FULL in msg.lower():
                status = "queue full"
            elif expect and matches(msg, expect):
                status = "clear error"
            else:
                status = "failure"
        dt = time.perf_counter() - t
        with lock:
            res.outcomes[status] += 1
            res.by_kind.setdefault(kind, Counter())[status] += 1
            res.latencies.append(dt)
            if status in ("failure", "timeout"):
                res.failures.append((kind, msg[:300]))

    with RssSampler(pid) as rss:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(one, reqs))
        res.wall = time.perf_counter() - t0
    res.rss_baseline, res.rss_peak = rss.baseline, rss.peak
    return res


def queue_env(queue: int = 2) -> dict[str, str]:
    """A server's settings for the queue check: ``CM_QUEUE_SIZE=queue`` and no waiters past the
    queue (``CM_WAITERS=0``). One-at-a-time requests (the hostile matrix) are served as usual."""
    return {"CM_QUEUE_SIZE": str(queue), "CM_WAITERS": "0"}


def queue_full_burst(url: str, n: int = 12, timeout: float = 60.0, steps: int = 39,
                     batch: int = 8) -> Counter:
    """Of ``n`` simultaneous requests (each ``steps`` evaluations of ``batch`` images) to a server
    started with :func:`queue_env`, the ones that do not fit get Gradio's clear queue-full message
    at once; the rest are served. The outcomes, counted."""
    from gradio_client import Client
    client = Client(url, verbose=False, max_workers=n + 8)
    jobs = [client.submit(*gen_args(steps=steps, seed=i, batch=batch), api_name="/generate_steps")
            for i in range(n)]
    out: Counter = Counter()
    for j in jobs:
        try:
            check_result("/generate_steps", j.result(timeout=timeout))
            out["ok"] += 1
        except TimeoutError:
            out["timeout"] += 1
        except Exception as e:  # noqa: BLE001
            out["queue full" if QUEUE_FULL in str(e).lower() else "failure: " + str(e)[:120]] += 1
    return out


def queue_full_check(tmp: Path, n: int = 12, queue: int = 2, timeout: float = 60.0,
                     steps: int = 39, batch: int = 8) -> Counter:
    """:func:`queue_full_burst` on a server of its own started with :func:`queue_env`."""
    from app_server import AppServer
    srv = AppServer(tmp, {**queue_env(queue), "CM_WARMUP": "0", "CM_CACHE_EXAMPLES": "0"})
    try:
        return queue_full_burst(srv.url, n, timeout, steps, batch)
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- the soak
@dataclass
class SoakResult:
    settle: float = 2.0  # seconds between the end of a round and the RSS reading
    rounds: list = field(default_factory=list)  # (RSS after the round, wall s, failures, peak RSS during it)

    def last_spread(self, k: int = 5) -> float:
        """(max - min) / min of the RSS over the last ``k`` rounds."""
        last = [r[0] for r in self.rounds[-k:]]
        return (max(last) - min(last)) / min(last) if last else float("nan")


def soak(url: str, pid: int, rounds: int = 10, n: int = 40, batch: int = 16, timeout: float = 300.0,
         settle: float = 2.0) -> SoakResult:
    """``rounds`` rounds of ``n`` concurrent /generate requests of ``batch`` images each; the
    server's resident memory (RSS, with its children) is read ``settle`` seconds after each round."""
    from gradio_client import Client
    client = Client(url, verbose=False, max_workers=n + 8)
    res = SoakResult(settle)
    for r in range(rounds):
        t = time.perf_counter()
        with RssSampler(pid, period=0.2) as rss:
            jobs = [client.submit(*gen_args(seed=(r * n + i) * batch, batch=batch), api_name="/generate")
                    for i in range(n)]
            failed = 0
            for j in jobs:
                try:
                    check_result("/generate", j.result(timeout=timeout))
                except Exception:  # noqa: BLE001 - counted; the soak is about memory
                    failed += 1
        wall = time.perf_counter() - t
        time.sleep(settle)
        res.rounds.append((RssSampler(pid).current(), wall, failed, rss.peak))
        print(f"soak round {r + 1}/{rounds}: RSS {mb(res.rounds[-1][0])} (peak {mb(rss.peak)}), {wall:.1f} s, "
              f"{failed} failed", flush=True)
    return res


def soak_markdown(s: SoakResult, n: int, batch: int) -> str:
    rows = "\n".join(f"| {i + 1} | {rss / 2 ** 20:.0f} | {peak / 2 ** 20:.0f} | {wall:.1f} | {failed} |"
                     for i, (rss, wall, failed, peak) in enumerate(s.rounds))
    k = min(5, len(s.rounds))
    return (f"### Soak: {len(s.rounds)} rounds of {n} concurrent /generate requests x batch {batch}\n\n"
            f"| round | server RSS {s.settle:g} s after it (MiB) | peak during it (MiB) | wall (s) | failed |\n"
            f"|---|---|---|---|---|\n{rows}\n\n"
            f"Over the last {k} rounds the RSS spreads by {100 * s.last_spread(k):.1f}% "
            f"({'flat: within 10%' if s.last_spread(k) <= 0.10 else 'NOT flat: over 10%'}).\n")


def mb(b: int) -> str:
    """``b`` bytes in MiB, for reports."""
    return f"{b / 2 ** 20:.0f} MiB"
