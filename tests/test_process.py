"""The fast path's process-wide settings are made in one function, which says what it set."""
from __future__ import annotations

import os

import torch

from cm_core.accel import entry, process


def test_a_cpu_process_gets_the_allocator_settings_and_nothing_of_cuda(monkeypatch):
    monkeypatch.setattr(process, "tune_allocator", lambda: True)
    before = torch.backends.cudnn.benchmark
    done = process.setup_process(torch.device("cpu"))
    assert list(done) == ["malloc"] and "1 arena" in done["malloc"]
    assert torch.backends.cudnn.benchmark == before
    monkeypatch.setattr(process, "tune_allocator", lambda: False)  # CM_CPU_MALLOC=0, or not glibc
    assert process.setup_process(torch.device("cpu")) == {}


def test_compilation_sets_the_inductor_cache_and_the_recompile_limit(monkeypatch, tmp_path):
    import torch._dynamo.config as dc
    monkeypatch.setattr(process, "tune_allocator", lambda: False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "placeholder")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")  # restored (to unset) after the test
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name):
            monkeypatch.setattr(dc, name, 8)
    done = process.setup_process(torch.device("cpu"), compile=True, buckets=9, cache_dir=tmp_path / "ind")
    assert done["inductor cache"] == str(tmp_path / "ind") == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert (tmp_path / "ind").is_dir() and done["dynamo recompile limit"] == "22"
    # a directory the user set is kept
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert process.setup_process(torch.device("cpu"), True, 1, tmp_path / "ind")["inductor cache"] == str(
        tmp_path / "mine")


def test_optimize_makes_its_process_settings_through_setup_process(monkeypatch):
    from cm_core.models.checkpoints import load_denoiser
    seen = []
    monkeypatch.setattr(entry, "setup_process", lambda *a: seen.append(a) or {})
    entry.optimize(load_denoiser("cd_digits32", device="cpu"), copy=True)
    assert seen == [(torch.device("cpu"), False, len(entry.CPU_BUCKETS))]
