"""cm_core.service without a server: the model cache, the model table, classes, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cm_core import service as S
from cm_core.models.checkpoints import CheckpointError
from cm_core.models.imagenet_classes import imagenet_class_index, imagenet_class_names
from cm_core.models.registry import REGISTRY, get_spec


@pytest.fixture(autouse=True)
def exact_path(monkeypatch):
    """The model cache's stand-in loaders return objects that are no networks: no fast path
    (CM_FAST=auto would put them on it on a CPU)."""
    monkeypatch.setenv("CM_FAST", "0")


class _Fake(torch.nn.Module):
    closed: list[str] = []

    def __init__(self, name):
        super().__init__()
        self.name = name

    def close(self):  # a fast model's: stop compiling, drop CUDA graphs
        _Fake.closed.append(self.name)


def _cache(cap=2, fail=(), oom_once=(), free=None):
    calls = []
    oom_left = set(oom_once)

    def loader(name, device=None, dtype=None):
        calls.append(name)
        if name in fail:
            raise CheckpointError(f"{name} is broken")
        if name in oom_left:
            oom_left.discard(name)
            raise torch.OutOfMemoryError("CUDA out of memory")
        return _Fake(name)
    return S.ModelCache(capacity=cap, device="cpu", loader=loader, free_memory=free or (lambda d: None)), calls


def test_cache_is_a_bounded_lru():
    c, calls = _cache(cap=2)
    _Fake.closed = []
    for name in ("cd_digits32", "ct_digits32", "cd_digits32", "edm_digits32"):
        c.get(name)
    assert c.names() == ["cd_digits32", "edm_digits32"]  # ct was least recently used
    assert calls == ["cd_digits32", "ct_digits32", "edm_digits32"]
    assert _Fake.closed == ["ct_digits32"]  # an evicted model is released
    c.evict(keep="edm_digits32")
    assert _Fake.closed == ["ct_digits32", "cd_digits32"]


def test_failed_load_is_not_cached():
    c, calls = _cache(fail={"ct_digits32"})
    with pytest.raises(CheckpointError):
        c.get("ct_digits32")
    with pytest.raises(CheckpointError):
        c.get("ct_digits32")
    assert calls == ["ct_digits32"] * 2 and c.names() == []


def test_oom_evicts_the_others_and_retries():
    c, calls = _cache(cap=3, oom_once={"edm_digits32"})
    c.get("cd_digits32")
    c.get("ct_digits32")
    c.get("edm_digits32")
    assert c.names() == ["edm_digits32"] and calls.count("edm_digits32") == 2


def test_gpu_memory_aware_eviction_before_a_load():
    free = {"bytes": 0}
    c, _ = _cache(cap=5, free=lambda d: free["bytes"])
    c.get("cd_digits32")  # nothing to evict yet: loads anyway
    c.get("ct_digits32")
    assert c.names() == ["ct_digits32"]  # no free memory: the older model made room
    free["bytes"] = 10 ** 12
    c.get("edm_digits32")
    assert c.names() == ["ct_digits32", "edm_digits32"]


def test_cache_size_from_environment(monkeypatch):
    monkeypatch.setenv("CM_MODEL_CACHE_SIZE", "3")
    assert S.ModelCache(device="cpu").capacity == 3
    monkeypatch.setenv("CM_MODEL_CACHE_SIZE", "0")
    with pytest.raises(ValueError):
        S.ModelCache(device="cpu")


def test_model_rows_cover_the_registry():
    rows = S.model_rows()
    assert [r[0] for r in rows] == list(REGISTRY)
    by = {r[0]: dict(zip(S.TABLE_HEADERS, r)) for r in rows}
    assert by["cd_imagenet64_lpips"]["kind"] == "CD-LPIPS" and by["ct_bedroom256"]["resolution"] == "256x256"
    assert by["edm_imagenet64_ema"]["kind"] == "EDM teacher"
    if by["cd_imagenet64_l2"]["on disk"] == "no":
        assert "fetch_checkpoints.sh cd_imagenet64_l2" in by["cd_imagenet64_l2"]["how to get it"]
        assert by["cd_imagenet64_l2"]["size"] == "~1.18 GB"


def test_imagenet_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[207] == "Golden Retriever"
    assert names[281] == "tabby cat" and names[999] == "toilet paper"
    assert imagenet_class_index("golden retriever") == 207


def test_parse_class():
    inet, digits = get_spec("cd_imagenet64_l2"), get_spec("cd_digits32")
    assert S.parse_class(inet, "207: Golden Retriever") == 207
    assert S.parse_class(inet, "goldfish") == 1 and S.parse_class(inet, 999) == 999
    assert S.parse_class(inet, "random") is None and S.parse_class(inet, None) is None
    assert S.parse_class(digits, "7") == 7
    assert S.parse_class(get_spec("cd_bedroom256_l2"), "3") is None  # unconditional
    for bad in (1000, "1000", "retriever of gold"):
        with pytest.raises(ValueError):
            S.parse_class(inet, bad)
    assert S.class_choices(inet)[:2] == ["random", "0: tench"] and len(S.class_choices(inet)) == 1001


@pytest.mark.parametrize("kw,needle", [
    (dict(batch_size=0), "batch size"), (dict(batch_size=2.5), "integer"), (dict(seed=-1), "seed"),
    (dict(dropout=0.95), "dropout"), (dict(steps=40), "steps"), (dict(ts="0,40"), "ts"),
    (dict(ts="a,b"), "comma-separated"), (dict(model="nope"), "unknown model"),
    (dict(model="edm_digits32", heun_steps=1), "Heun steps"),
])
def test_plan_rejects_bad_parameters(kw, needle):
    with pytest.raises(ValueError, match=f"(?i){needle}"):
        S.plan(S.GenerateRequest(**kw))


def test_plan_describes_the_sampling():
    assert S.plan(S.GenerateRequest()).evaluations == 1
    p = S.plan(S.GenerateRequest(ts="0,106,200/201", seed=5, batch_size=3))
    assert p.evaluations == 2 and p.seeds == (5, 6, 7) and "201-point" in p.description
    p = S.plan(S.GenerateRequest(model="edm_digits32"))
    assert p.evaluations == 2 * get_spec("edm_digits32").heun_steps - 1
    assert S.teacher_for("cd_imagenet64_lpips") == "edm_imagenet64_ema"
    assert S.teacher_for("ct_digits32") == "edm_digits32"


def test_example_files(tmp_path):
    from PIL import Image
    files = S.example_files(tmp_path)
    with Image.open(files["digit"]) as im:
        assert im.size == (32, 32)
    with Image.open(files["mask"]) as m:
        a = np.asarray(m)
        assert m.mode == "RGBA" and 0 < (a[..., 3] > 0).mean() < 1


@pytest.mark.parametrize("size,low_res,says", [
    ((256, 256), True, "the 256x256 upload was resized to 8x8, the low-resolution grid of x4 on 32 px "
                       "(a low-resolution upload for x4 is 8 px)"),
    ((16, 16), True, "(patch factor 2 would use it as it is)"),
    ((8, 8), True, "the 8x8 upload is the low-resolution input as it is"),
    ((40, 50), False, "the 40x50 upload was centre-cropped and resized to 8x8"),
])
def test_super_resolution_says_how_it_fitted_the_upload(size, low_res, says):
    from PIL import Image
    r = S.super_resolve("cd_digits32", Image.new("RGB", size), low_res=low_res, patch_size=4, steps=1)
    assert says in r.summary()


def test_a_new_editor_is_one_transform_and_one_request_type():
    """A toy editor, 'keep the top half', defined here and nowhere else, runs through the app's
    runner (``service.edits.run``: checks, model cache, timing, path) like the built-in ones."""
    from dataclasses import dataclass
    from typing import ClassVar

    from PIL import Image

    from cm_core.editing import PictureEdit, Replacement, ScheduledEdit, edit_loop
    from cm_core.editing.transforms import keep_known
    from cm_core.service import edits

    def top_half(y):  # the transform: what is kept (1) and what is generated (0)
        keep = torch.zeros_like(y[:, :1])
        keep[..., : y.shape[-2] // 2, :] = 1
        return keep

    @dataclass(frozen=True, kw_only=True)
    class KeepTop(ScheduledEdit):
        label: ClassVar[str] = "keep-top step"
        verb: ClassVar[str] = "top half kept"

        def edit(self, den, y, gens, labels, callback):
            keep = top_half(y)
            out = edit_loop(den, self.start(den, y, gens), self.ts, self.grid_size, gens,
                            Replacement(keep_known, (y, keep.expand_as(y)), "keep-top"), labels, callback=callback)
            return out.clamp(-1, 1), y * keep - (1 - keep)

    assert issubclass(KeepTop, PictureEdit)
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    steps = []
    spec = get_spec("cd_digits32")
    r = edits.run(spec, KeepTop(image=photo, seed=4, ts=(0, 20, 39)), lambda f, d: steps.append(d))
    fitted = np.asarray(r.input)
    assert r.output.size == r.reference.size == r.input.size == (32, 32) and r.seconds > 0
    assert (np.asarray(r.output)[:16] == fitted[:16]).all()  # the kept half, exactly
    assert (np.asarray(r.output)[16:] != fitted[16:]).any() and (np.asarray(r.reference)[16:] == 0).all()
    assert r.description == "top half kept with ts 0,20,39 on a 40-point grid"
    assert len(steps) == 2 and all("keep-top step" in d for d in steps)
    again = edits.run(spec, KeepTop(image=photo, seed=4, ts=(0, 20, 39)))
    assert again.output.tobytes() == r.output.tobytes()
