"""ZeroGPU with a stand-in ``spaces`` module: handlers wrapped in spaces.GPU with an estimated
duration, models loaded before the GPU is attached, no compilation and no CUDA graphs; elsewhere
nothing changes and ``spaces`` is never imported."""
from __future__ import annotations

import sys
import types

import pytest

from cm_core import service as S
from cm_core.service import model_cache
from cm_core.service.zerogpu import estimate_seconds, fast_options, zero_gpu_active

MODEL_EVENTS = {"generate", "generate_steps", "compare_teacher", "colorize", "inpaint", "super_resolve",
                "interpolate", "denoise", "stroke_guided"}


class StandInSpaces(types.ModuleType):
    """``spaces`` as the ZeroGPU platform provides it: ``GPU(duration=...)`` and ``config.Config``."""

    def __init__(self) -> None:
        super().__init__("spaces")
        self.config = types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=True))
        self.wrapped: set[str] = set()
        self.calls: list[dict] = []

    def GPU(self, task=None, *, duration=60):  # noqa: N802 - the real name
        def decorate(fn):
            self.wrapped.add(fn.__name__)

            def on_gpu(*args, **kwargs):
                secs = duration(*args, **kwargs) if callable(duration) else duration
                self.calls.append({"fn": fn.__name__, "duration": secs, "loaded": S.cache().names()})
                return fn(*args, **kwargs)
            return on_gpu
        return decorate(task) if task is not None else decorate


@pytest.fixture
def zero(monkeypatch):
    stand_in = StandInSpaces()
    monkeypatch.setitem(sys.modules, "spaces", stand_in)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(model_cache, "_CACHE", S.ModelCache(capacity=2, device="cpu"))  # no GPU in the tests
    return stand_in


def _fns(demo) -> dict:
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    return {f.api_name: f.fn for f in fns if f.api_name}


def test_every_model_handler_runs_under_spaces_gpu_with_an_estimated_duration(zero):
    from cm_app.layout import build_app
    assert zero_gpu_active()
    demo = build_app()
    assert MODEL_EVENTS <= zero.wrapped  # the events (and the examples' handlers)
    fns = _fns(demo)
    *previews, (gallery, info) = fns["generate_steps"]("cd_digits32", 2, "", 0, 3, 0.0, "random", 18)
    assert len(gallery) == 3 and len(previews) == 2  # one preview per step, then the samples
    (call,) = zero.calls
    assert call["fn"] == "generate_steps" and "cd_digits32" in call["loaded"]  # loaded before the GPU
    assert call["duration"] == estimate_seconds({"model": "cd_digits32", "steps": 2, "ts": "", "batch_size": 3})
    galleries, infos = fns["generate"](["cd_digits32"] * 2, [1, 1], ["", ""], [0, 5], [2, 1], [0.0, 0.0],
                                       ["random"] * 2, [18, 18])  # batched: one GPU call for both
    assert [len(g) for g in galleries] == [2, 1] and zero.calls[-1]["fn"] == "generate"


def test_duration_grows_with_batch_size_and_steps_within_bounds(monkeypatch):
    def heun(batch: int, steps: int) -> int:
        return estimate_seconds({"model": "edm_bedroom256_ema", "batch_size": batch, "heun_steps": steps})
    assert heun(16, 40) > heun(8, 40) > heun(8, 10) >= 10
    assert heun(16, 40) == 70  # 6 s + 16 images x 79 evaluations x 0.05 s
    assert heun(64, 200) == 120  # capped ($CM_GPU_MAX_DURATION)
    monkeypatch.setenv("CM_GPU_MAX_DURATION", "300")
    assert heun(64, 200) == 300
    one = {"model": "cd_imagenet64_l2", "steps": 1, "ts": "", "batch_size": 16}
    assert estimate_seconds(one) == 10 and estimate_seconds({**one, "ts": "0,22,39"}) == 10
    batched = {k: [v] * 3 for k, v in {**one, "batch_size": 16, "steps": 39}.items()}
    assert estimate_seconds(batched) > estimate_seconds({**one, "steps": 39})  # three requests
    teacher = estimate_seconds({"model": "cd_bedroom256_lpips", "batch_size": 4, "heun_steps": 40},
                               runs=S.teacher_for)
    assert teacher == estimate_seconds({"model": "edm_bedroom256_ema", "batch_size": 4, "heun_steps": 40})
    assert estimate_seconds({"model": "no_such_model", "batch_size": 1}) == 60  # handler reports it


def test_compilation_and_cuda_graphs_are_off_on_zerogpu(zero, monkeypatch):
    import cm_core.accel.entry as fast
    seen: list[dict] = []
    monkeypatch.setattr(fast, "optimize", lambda den, **kw: seen.append(kw) or den)
    monkeypatch.setenv("CM_FAST", "1")
    assert fast_options() == {"compile": False, "cuda_graphs": False}
    cache = S.ModelCache(capacity=1, device="cpu", loader=lambda name, **kw: object())
    cache.get("cd_digits32")
    assert seen[-1]["compile"] is False and seen[-1]["cuda_graphs"] is False
    monkeypatch.setenv("CM_COMPILE", "1")  # asked for, yet ZeroGPU keeps compilation off
    S.ModelCache(capacity=1, device="cpu", loader=lambda name, **kw: object()).get("cd_digits32")
    assert seen[-1]["compile"] is False and seen[-1]["cuda_graphs"] is False
    monkeypatch.delenv("CM_DEVICE", raising=False)
    on_zero = S.ModelCache(capacity=1)  # models go to (emulated) cuda, no memory queries there
    assert on_zero.device.type == "cuda" and on_zero._free_memory(on_zero.device) is None


def test_elsewhere_nothing_changes_and_spaces_is_not_imported(monkeypatch):
    import cm_core.accel.entry as fast
    from cm_app import deploy
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not zero_gpu_active() and fast_options() == {}

    def handler(model, steps):
        return model, steps
    assert deploy._on_gpu(handler, "generate") is handler
    assert deploy.model_event(handler, "generate")("cd_digits32", 2) == ("cd_digits32", 2)
    seen: list[dict] = []
    monkeypatch.setattr(fast, "optimize", lambda den, **kw: seen.append(kw) or den)
    monkeypatch.setenv("CM_FAST", "1")
    S.ModelCache(capacity=1, device="cpu", loader=lambda name, **kw: object()).get("cd_digits32")
    assert "compile" not in seen[-1] and "cuda_graphs" not in seen[-1]  # the fast path's own defaults
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # the platform's flag without the package: off
    assert not zero_gpu_active()
    assert "spaces" not in sys.modules
