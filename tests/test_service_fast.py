"""The app's model cache puts models on the fast path where it pays (CUDA, CPUs), or when asked."""
import numpy as np
import pytest

from cm_core import service as S
from cm_core.accel.fast import FastDenoiser
from cm_core.service import model_cache
from cm_core.service.model_cache import _use_fast


def test_fast_path_switch(monkeypatch):
    import torch
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    from cm_core.accel import cpu as cpu_mod
    monkeypatch.delenv("CM_FAST", raising=False)
    for bf16 in (False, True):  # auto: CUDA and CPUs (their plan depends on native bf16), not MPS
        monkeypatch.setattr(cpu_mod, "native_bf16", lambda bf16=bf16: bf16)
        assert _use_fast(cpu) and _use_fast(cuda) and not _use_fast(torch.device("mps"))
    monkeypatch.setattr(cpu_mod, "native_bf16", lambda: False)
    monkeypatch.setenv("CM_FAST", "1")
    assert _use_fast(cpu) and _use_fast(torch.device("mps"))
    monkeypatch.setenv("CM_FAST", "0")
    assert not _use_fast(cuda)
    monkeypatch.setenv("CM_FAST", "yes")
    with pytest.raises(ValueError, match="CM_FAST"):
        _use_fast(cpu)


def test_service_on_the_fast_path_gives_the_exact_images(tmp_path, monkeypatch):
    from app_server import random_embedded_models
    monkeypatch.setenv("CM_EMBEDDED_DIR", str(random_embedded_models(tmp_path / "embedded")))
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("CM_FAST", mode)
        monkeypatch.setattr(model_cache, "_CACHE", S.ModelCache(capacity=1, device="cpu"))
        res = S.generate(S.GenerateRequest(model="cd_digits32", steps=2, batch_size=2, class_label=3))
        _, den = S.cache().get("cd_digits32")
        assert isinstance(den, FastDenoiser) == (mode == "1")
        results[mode] = np.stack([np.asarray(im) for im in res.images])
    assert results["0"].shape == (2, 32, 32, 3)
    assert np.abs(results["0"].astype(int) - results["1"].astype(int)).max() <= 1


def test_interpolation_frames_run_in_bounded_batches(tmp_path, monkeypatch):
    """Frames run CM_MAX_BATCH at a time; the frames do not depend on that bound."""
    from app_server import random_embedded_models
    from PIL import Image
    monkeypatch.setenv("CM_EMBEDDED_DIR", str(random_embedded_models(tmp_path / "embedded")))
    monkeypatch.setattr(model_cache, "_CACHE", S.ModelCache(capacity=1, device="cpu"))
    a, b = Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))
    sizes = []
    real = S.cache().get("cd_digits32")[1].forward

    def spy(x, *args, **kw):
        sizes.append(x.shape[0])
        return real(x, *args, **kw)

    S.cache().get("cd_digits32")[1].forward = spy
    out = {}
    for bound in ("16", "3"):
        monkeypatch.setenv("CM_MAX_BATCH", bound)
        for mode in ("seeds", "images"):
            res = S.interpolate("cd_digits32", mode=mode, image_a=a, image_b=b, frames=7, class_label=1)
            out[bound, mode] = np.stack([np.asarray(f) for f in res.frames])
    assert max(sizes) == 7 and sizes[-1] <= 3
    for mode in ("seeds", "images"):
        assert np.abs(out["16", mode].astype(int) - out["3", mode].astype(int)).max() <= 1
