"""The CPU allocator settings of the fast path: applied once through glibc's mallopt,
skipped when turned off or where there is no glibc, and the fast path still exact afterwards."""
import ctypes
import subprocess
import sys

from cm_core.accel import cpu_malloc

_PROBE = """
import ctypes, json, os, sys
from cm_core import optimize
from cm_core.accel import cpu_malloc
from cm_core.models.checkpoints import load_denoiser
import torch
den = load_denoiser("cd_digits32")
f = optimize(den, copy=True)
x = torch.randn(16, 3, 32, 32) * 80
big = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB: from the heap once tuned
with torch.no_grad():
    err = (f(x, 80.0, torch.arange(16) % 10) - den(x, 80.0, torch.arange(16) % 10)).abs().max().item()
print(json.dumps({"tuned": cpu_malloc.tune_allocator(), "err": err}))
"""


def _probe(env_value: str | None, probe: str = _PROBE) -> dict:
    """Run ``probe`` in a fresh process (the allocator is tuned once per process)."""
    import json
    import os
    env = dict(os.environ)
    env.pop("CM_CPU_MALLOC", None)
    if env_value is not None:
        env["CM_CPU_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_optimize_tunes_glibc_once_and_stays_exact():
    has_glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
    res = _probe(None)
    assert res["tuned"] is has_glibc and res["err"] < 1e-4


def _tune_with(monkeypatch, cdll: type) -> bool:
    """``tune_allocator()`` afresh with ``ctypes.CDLL`` replaced by ``cdll``."""
    monkeypatch.setattr(cpu_malloc.ctypes, "CDLL", cdll)
    cpu_malloc.tune_allocator.cache_clear()
    try:
        return cpu_malloc.tune_allocator()
    finally:
        cpu_malloc.tune_allocator.cache_clear()


def test_cm_cpu_malloc_0_turns_it_off(monkeypatch):
    """With CM_CPU_MALLOC=0 nothing is called (mallopt would raise here)."""
    class Refuses:
        def __init__(self, *_):
            raise AssertionError("mallopt was reached with CM_CPU_MALLOC=0")
    monkeypatch.setenv("CM_CPU_MALLOC", "0")
    assert _tune_with(monkeypatch, Refuses) is False


def test_without_mallopt_nothing_happens(monkeypatch):
    class NoMallopt:
        def __init__(self, *_):
            pass
    monkeypatch.delenv("CM_CPU_MALLOC", raising=False)
    assert _tune_with(monkeypatch, NoMallopt) is False
    assert set(cpu_malloc.MALLOC_SETTINGS) == {"arena_max", "mmap_threshold", "trim_threshold", "top_pad"}
