"""Load: 50 concurrent mixed requests through ``gradio_client`` against the running app.

Loopback only, bounded in count (50) and time (a 60 s timeout per request, < 90 s in all): every
request succeeds, or gets the clear error it was built to get, or a clear queue-full message;
nothing waits forever, the server's RSS stays bounded, and the app still answers afterwards.
The same burst, with its figures, is in ``scripts/load_runs.py`` (reported by ``scripts/reliability_report.py``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")
pytest.importorskip("psutil")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import hostile_inputs as H  # noqa: E402
import load_runs as L  # noqa: E402

N = 50
GiB = 2 ** 30


@pytest.fixture(scope="module")
def server(shared_app, tmp_path_factory):
    """The session's shared app server (``conftest.shared_app``) and the burst's uploads."""
    return shared_app, H.make_uploads(tmp_path_factory.mktemp("load") / "uploads")


def test_fifty_concurrent_mixed_requests(server):
    srv, files = server
    t = time.perf_counter()
    b = L.burst(srv.url, srv.proc.pid, files, n=N, timeout=60.0)
    wall = time.perf_counter() - t
    print(f"\n{N} requests in {b.wall:.1f} s: {dict(b.outcomes)}; p50 {b.pct(0.5):.2f} s, p95 {b.pct(0.95):.2f} s; "
          f"RSS {b.rss_baseline / 2 ** 20:.0f} -> peak {b.rss_peak / 2 ** 20:.0f} MiB")
    assert sum(b.outcomes.values()) == N
    assert not b.failures, b.failures  # includes timeouts
    assert b.outcomes["ok"] + b.outcomes["clear error"] + b.outcomes["queue full"] == N
    assert b.outcomes["clear error"] == N // 10  # the invalid ones, with their message
    assert wall < 90
    assert b.rss_peak < b.rss_baseline + 1 * GiB and b.rss_peak < 3 * GiB
    assert srv.proc.poll() is None


def test_app_still_answers_after_the_burst(server):
    from gradio_client import Client
    srv, _ = server
    o = H.run_case(Client(srv.url, verbose=False), H.Case("recovery", "after", "/generate", lambda: H.gen_args()))
    assert o.succeeded, o.message


def test_memory_goes_back_when_idle_and_the_soak_reports_each_round(server):
    """A short soak (the full one, 10 x 40 requests of 16 images, is the script's): the RSS
    after each round is back near the level before the burst, not at the burst's peak."""
    srv, _ = server
    s = L.soak(srv.url, srv.proc.pid, rounds=3, n=6, batch=8, timeout=120.0, settle=1.5)
    after = [r[0] for r in s.rounds]
    print(f"\nsoak RSS after each round: {[round(a / 2 ** 20) for a in after]} MiB, "
          f"peaks {[round(r[3] / 2 ** 20) for r in s.rounds]} MiB")
    assert not any(r[2] for r in s.rounds)
    assert s.last_spread(2) <= 0.10
    assert "| round |" in L.soak_markdown(s, 6, 8)
