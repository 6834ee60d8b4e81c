"""Reliability and security: hostile checkpoints, hostile uploads, parameter limits, faults.

The API part starts the app once (random-weight embedded models, a checkpoint directory seeded
with hostile files) and runs the hostile-input matrix of ``scripts/hostile_inputs.py``; the
rest runs the service in-process: injected CUDA out-of-memory errors, failed loads that must not
be cached, limits, and a hypothesis property test of the user-level editors.
"""
from __future__ import annotations

import io
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cm_core import service as S
from cm_core.editing import picture_editors as E
from cm_core.editing.pictures import ImageEditError, load_image, mask_array
from cm_core.models.checkpoints import CheckpointError
from cm_core.sampling import generate as G
from cm_core.sampling.generate import model_ts
from cm_core.service import model_cache

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import hostile_inputs as H  # noqa: E402
import load_runs as L  # noqa: E402

MODEL = "cd_digits32"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- through the API
@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory):
    pytest.importorskip("gradio_client")
    from app_server import AppServer
    tmp = tmp_path_factory.mktemp("reliability")
    files = H.make_uploads(tmp / "uploads")
    H.seed_checkpoints(tmp / "app" / "checkpoints")
    # the queue check's settings: the matrix sends one request at a time, which they do not touch
    srv = AppServer(tmp / "app", {"CM_CACHE_EXAMPLES": "0", **L.queue_env(2)})
    yield srv, files, tmp / "app"
    srv.stop()


def test_hostile_input_matrix_through_the_api(hostile_app):
    """Every hostile upload, parameter and checkpoint: a model-sized result or a clear message; the
    pickled callable never runs; the other models keep serving; a fixed file loads (not cached)."""
    from gradio_client import Client
    srv, files, app_dir = hostile_app
    client = Client(srv.url, verbose=False)
    outcomes = [H.run_case(client, c, timeout=60) for c in
                H.matrix(files, app_dir / "checkpoints", app_dir / "embedded")]
    bad = [f"{o.case.kind} / {o.case.name} via {o.case.api}: {o.message[:200]}"
           for o in outcomes if not o.as_expected]
    assert not bad, "\n".join(bad)
    kinds = {o.case.kind for o in outcomes}
    assert {"upload", "parameter", "checkpoint", "recovery"} <= kinds and len(outcomes) >= 50
    assert not (app_dir / "checkpoints" / H.PWNED).exists(), "the pickled callable ran"
    assert srv.proc.poll() is None
    # no server path leaks into upload messages
    assert not any("/tmp/gradio" in o.message for o in outcomes if o.case.kind == "upload")


def test_a_full_queue_is_a_clear_message(hostile_app):
    """With CM_QUEUE_SIZE=2 and no waiters, simultaneous requests beyond the queue are refused at
    once, clearly; the others are served."""
    q = L.queue_full_burst(hostile_app[0].url, n=12, timeout=60.0, steps=10, batch=4)
    assert q["queue full"] >= 1 and q["ok"] >= 1, q
    assert set(q) <= {"ok", "queue full"}, q


def test_empty_pt_is_a_clear_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path))
    (tmp_path / "cd_bedroom256_l2.pt").write_bytes(b"")
    from cm_core.models.checkpoints import load_denoiser
    with pytest.raises(CheckpointError, match="cd_bedroom256_l2.pt"):
        load_denoiser("cd_bedroom256_l2", device="cpu")


# ----------------------------------------------------------------------------- in-process service
@pytest.fixture()
def service(tmp_path, monkeypatch):
    """The service on random-weight embedded models in a scratch folder, with a fresh cache."""
    from app_server import random_embedded_models
    emb = random_embedded_models(tmp_path / "embedded")
    monkeypatch.setenv("CM_EMBEDDED_DIR", str(emb))
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_cache, "_CACHE", S.ModelCache(capacity=2, device="cpu"))
    return emb


def _oom(times: int, calls: list):
    def boom(*a, **k):
        calls.append(1)
        if len(calls) <= times:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)
    real = G.sample_batch
    return boom


def test_injected_cuda_oom_frees_memory_reports_and_next_request_succeeds(service, monkeypatch):
    emptied = []
    monkeypatch.setattr(S.ModelCache, "_empty_cuda", lambda self: emptied.append(1))
    S.cache().get("ct_digits32")  # another model in memory: evicted by the OOM handling
    calls: list = []
    monkeypatch.setattr(G, "sample_batch", _oom(2, calls))
    with pytest.raises(ValueError, match="out of GPU memory running cd_digits32: use a smaller batch size"):
        S.generate(S.GenerateRequest(model=MODEL, batch_size=16))
    assert len(calls) == 2 and S.cache().names() == [MODEL]  # retried once after evicting the others
    assert len(emptied) >= 2  # CUDA cache emptied on eviction and after the failed retry
    res = S.generate(S.GenerateRequest(model=MODEL, batch_size=2))  # the next request is fine
    assert len(res.images) == 2 and res.images[0].size == (32, 32)


def test_a_single_oom_is_retried_transparently(service, monkeypatch):
    calls: list = []
    monkeypatch.setattr(G, "sample_batch", _oom(1, calls))
    res = S.generate(S.GenerateRequest(model=MODEL, batch_size=2))
    assert len(res.images) == 2 and len(calls) == 2


def test_oom_in_an_edit_and_in_the_app_handlers_is_a_message(service, monkeypatch):
    import gradio as gr

    from cm_app import handlers as app
    photo = Image.new("RGB", (40, 30), (90, 120, 30))
    from cm_core.editing import picture_editors as PE
    real_edit, real_sample = PE.run_edit, G.sample_batch

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(PE, "run_edit", boom)
    with pytest.raises(gr.Error, match="out of GPU memory"):
        app.colorize(MODEL, photo, 2, "", 0, "random")
    monkeypatch.setattr(G, "sample_batch", boom)
    with pytest.raises(gr.Error, match="out of GPU memory"):
        list(app.generate_steps(MODEL, 1, "", 0, 2, 0.0, "random", 18))
    with pytest.raises(gr.Error, match="out of GPU memory"):
        app.generate([MODEL], [1], [""], [0], [2], [0.0], ["random"], [18])
    monkeypatch.setattr(PE, "run_edit", real_edit)  # the next requests succeed
    monkeypatch.setattr(G, "sample_batch", real_sample)
    assert app.colorize(MODEL, photo, 2, "", 0, "random")[0][1].size == (32, 32)  # (before, after)
    *_, (gallery, info) = app.generate_steps(MODEL, 1, "", 0, 2, 0.0, "random", 18)
    assert len(gallery) == 2 and "images/s" in info


def test_concurrent_requests_with_different_dropout_equal_the_same_requests_one_at_a_time(service, monkeypatch):
    """Four compute slots (``CM_CONCURRENCY=4``) run four requests on one cached model at once,
    each with its own dropout rate: every image equals the one the request gives alone."""
    monkeypatch.setenv("CM_CONCURRENCY", "4")
    slots = S.ComputeSlots(S.concurrency())
    reqs = [S.GenerateRequest(model=MODEL, steps=4, seed=5, batch_size=2, dropout=p) for p in (0.0, 0.1, 0.3, 0.6)]
    pixels = lambda res: np.stack([np.asarray(im) for im in res.images])  # noqa: E731
    alone = [pixels(S.generate(r)) for r in reqs]
    assert all((a != alone[0]).any() for a in alone[1:])  # the rates give different images
    barrier, busy = threading.Barrier(len(reqs)), []

    def run(req):
        with slots.hold():
            busy.append(slots.busy)
            barrier.wait(timeout=30)  # all four hold a slot before any starts
            return pixels(S.generate(req))
    for _ in range(3):
        with ThreadPoolExecutor(len(reqs)) as ex:
            together = list(ex.map(run, reqs))
        assert max(busy) == 4
        for a, b in zip(alone, together):
            np.testing.assert_array_equal(a, b)
    assert S.cache().get(MODEL)[1].dropout == 0.0  # no request changed the shared model


def test_failed_load_is_not_cached_and_other_models_keep_serving(service):
    good = (service / "ct_digits32.safetensors").read_bytes()
    H.lying_safetensors(service / "ct_digits32.safetensors")
    with pytest.raises(CheckpointError, match="ct_digits32.safetensors.*re-create or re-download"):
        S.generate(S.GenerateRequest(model="ct_digits32", batch_size=1))
    assert "ct_digits32" not in S.cache().names()
    assert len(S.generate(S.GenerateRequest(model=MODEL, batch_size=1)).images) == 1
    (service / "ct_digits32.safetensors").write_bytes(good)  # fixed: the next call loads it
    assert len(S.generate(S.GenerateRequest(model="ct_digits32", batch_size=1)).images) == 1
    assert "ct_digits32" in S.cache().names()


def test_hostile_pt_files_through_the_service(service, tmp_path):
    info = H.seed_checkpoints(tmp_path / "checkpoints")
    for name in info:
        if name == "cd_bedroom256_l2":
            continue  # the 0-byte file: test_empty_pt_is_a_clear_error_naming_the_file
        with pytest.raises(S.USER_ERRORS) as e:
            S.generate(S.GenerateRequest(model=name, batch_size=1))
        assert f"{name}.pt" in str(e.value), str(e.value)
        assert name not in S.cache().names()
    assert not (tmp_path / "checkpoints" / H.PWNED).exists()
    assert len(S.generate(S.GenerateRequest(model=MODEL, batch_size=1)).images) == 1


def test_wrong_architecture_safetensors_is_a_user_error_naming_the_file(service):
    from safetensors.torch import save_file

    from cm_core.models.checkpoints import arch_meta
    from cm_core.models.network import build_unet
    from cm_core.models.registry import ArchSpec
    other = ArchSpec(32, 64, 1, (16, 8), class_cond=True, use_scale_shift_norm=True, num_head_channels=32,
                     channel_mult=(1, 2, 2), num_classes=10)  # differs from the registry's digits arch
    save_file({k: v.contiguous() for k, v in build_unet(other).state_dict().items()},
              str(service / "ct_digits32.safetensors"), metadata=arch_meta(other, "cm"))
    with pytest.raises(S.USER_ERRORS, match="ct_digits32.safetensors.*do not match the architecture"):
        S.generate(S.GenerateRequest(model="ct_digits32", batch_size=1))
    assert "ct_digits32" not in S.cache().names()


# ----------------------------------------------------------------------------- limits
def test_batch_size_is_bounded_by_cm_max_batch(monkeypatch):
    assert S.max_batch() == 16
    with pytest.raises(ValueError, match=r"batch size must be in \[1, 16\], got 17"):
        S.plan(S.GenerateRequest(batch_size=17))
    monkeypatch.setenv("CM_MAX_BATCH", "4")
    S.plan(S.GenerateRequest(batch_size=4))
    with pytest.raises(ValueError, match=r"batch size must be in \[1, 4\]"):
        S.plan(S.GenerateRequest(batch_size=5))
    with pytest.raises(ValueError, match="batch size"):
        S.plan(S.GenerateRequest(batch_size=10 ** 9))


@pytest.mark.parametrize("kw,needle", [
    (dict(ts=",".join(map(str, range(202))) + "/1000"), "at most 200"),
    (dict(ts="0,1/1"), "a grid needs at least 2 points"),
    (dict(steps=0), "steps"), (dict(steps="many"), "must be a number"), (dict(steps=1.5), "integer"),
    (dict(seed=S.MAX_SEED), "seed"), (dict(seed=float("nan")), "seed"), (dict(seed=float("inf")), "seed"),
    (dict(dropout="x"), "dropout"), (dict(dropout=-0.01), "dropout"), (dict(dropout=float("nan")), "dropout"),
    (dict(model="edm_digits32", heun_steps=10 ** 6), "Heun steps"),
])
def test_plan_limits(kw, needle):
    with pytest.raises(ValueError, match=f"(?i){needle}"):
        S.plan(S.GenerateRequest(**kw))


@pytest.mark.parametrize("call,needle", [
    (lambda img: S.super_resolve(MODEL, img, patch_size=3), "divide"),
    (lambda img: S.super_resolve(MODEL, img, patch_size=0), "patch factor"),
    (lambda img: S.super_resolve(MODEL, img, patch_size="x"), "patch factor"),
    (lambda img: S.denoise(MODEL, img, noise_level=256), "noise level"),
    (lambda img: S.denoise(MODEL, img, noise_level="loud"), "noise level"),
    (lambda img: S.denoise(MODEL, img, steps=17), "steps"),
    (lambda img: S.stroke_guided(MODEL, img, sigma=0), "sigma"),
    (lambda img: S.stroke_guided(MODEL, img, sigma=1e9), "sigma"),
    (lambda img: S.colorize(MODEL, img, seed=-1), "seed"),
    (lambda img: S.colorize(MODEL, img, steps=40), "steps"),
    (lambda img: S.colorize(MODEL, img, ts="0,1,2,3/2"), "ts"),
    (lambda img: S.interpolate(MODEL, frames=65), "frames"),
    (lambda img: S.interpolate(MODEL, frames=1), "frames"),
    (lambda img: S.interpolate(MODEL, mode="sideways"), "mode"),
])
def test_edit_parameter_limits(call, needle):
    with pytest.raises(ValueError, match=f"(?i){needle}"):
        call(Image.new("RGB", (40, 40), (50, 60, 70)))


def test_decompression_bomb_as_a_decoded_image_is_refused():
    """A framework may hand over an already-decoded image: the pixel limit still applies."""
    from cm_core.editing.pictures import prepare_image
    big = Image.new("L", (10, 10))
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 50
        with pytest.raises(ImageEditError, match="too large"):
            prepare_image(big, 32)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ----------------------------------------------------------------------------- property test
class _FakeDen(torch.nn.Module):
    """A cheap class-conditional 16 px 'consistency model' (shrinks its input towards 0)."""

    kind, num_classes, image_size, sigma_min, sigma_max, sigma_data = "cm", 10, 16, 0.002, 80.0, 0.5

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, sigma, labels=None, **kw):
        s = sigma.view(-1, 1, 1, 1)
        return self.w * x / torch.sqrt(1 + s ** 2)


MODES = ["RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1", "I;16", "I", "F", "LAB", "HSV"]


def _image(w: int, h: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.frombytes("I;16", (w, h), rng.integers(0, 65536, (h, w), dtype=np.uint16).tobytes())
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32))
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    return rgba.convert(mode)


def _source(img: Image.Image, form: str, seed: int):
    if form == "pil":
        return img
    if form == "gif":
        buf = io.BytesIO()
        frames = [img.convert("RGB"), Image.new("RGB", img.size, (seed % 256, 0, 0))]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
        return buf.getvalue()
    if form == "garbage":
        return np.random.default_rng(seed).bytes(64)
    if form == "truncated":
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "PNG")
        return buf.getvalue()[: max(8, len(buf.getvalue()) // 2)]
    if form == "array":
        return np.asarray(img.convert("RGBA"))
    buf = io.BytesIO()
    try:
        img.save(buf, "PNG")
    except OSError:
        img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _mask(kind: str, w: int, h: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random((h, w)) > 0.5
    if kind == "empty":
        return np.zeros((h, w), bool)
    if kind == "full":
        return np.ones((h, w), bool)
    if kind == "model size":
        return rng.random((16, 16)) > 0.5
    if kind == "other size":
        return rng.random((h + 3, w + 1)) > 0.5
    if kind == "editor":
        a = np.zeros((h, w, 4), np.uint8)
        a[: max(1, h // 2), : max(1, w // 2), 3] = 255
        return {"background": None, "layers": [Image.fromarray(a, "RGBA")], "composite": None}
    if kind == "editor without layers":
        return {"background": None, "layers": [], "composite": None}
    return Image.new("RGBA", (w, h), (0, 0, 0, 0))  # "transparent image": nothing painted


DEN = _FakeDen().eval()


def _mask_of(value):
    """A mask as the app reads it: an editor value's painted layers, anything else as it is."""
    from cm_app.editor_values import painted_mask
    return painted_mask(value) if isinstance(value, dict) else mask_array(value)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(1, 80), h=st.integers(1, 80), mode=st.sampled_from(MODES),
       form=st.sampled_from(["pil", "png", "array", "gif", "garbage", "truncated"]),
       editor=st.sampled_from(["colorize", "inpaint", "super_resolve", "denoise", "stroke"]),
       mask=st.sampled_from(["random", "empty", "full", "model size", "other size", "editor",
                             "editor without layers", "transparent image"]),
       patch=st.sampled_from([None, 1, 2, 3, 4, 16, 0]), steps=st.integers(1, 4),
       seed=st.integers(0, 2 ** 31), label=st.sampled_from([None, 0, 9, 10, -1]))
def test_user_level_editors_give_a_model_sized_image_or_a_clear_error(w, h, mode, form, editor, mask, patch,
                                                                     steps, seed, label):
    src = _source(_image(w, h, mode, seed), form, seed)
    common = dict(seed=seed, class_label=label)
    sched = dict(common, ts=model_ts(None, steps)[0], grid_size=40)
    make = {
        "colorize": lambda img: E.Colorize(image=img, **sched),
        "inpaint": lambda img: E.Inpaint(image=img, mask=_mask_of(_mask(mask, w, h, seed)), **sched),
        "super_resolve": lambda img: E.SuperResolve(image=img, patch_size=patch, **sched),
        "denoise": lambda img: E.Denoise(image=img, noise_std=None if seed % 2 else 10.0, num_evals=steps, **common),
        "stroke": lambda img: E.StrokeGuided(image=img, sigma=0.5 + seed % 20, num_evals=steps, **common),
    }[editor]
    try:
        r = E.run_edit(DEN, 16, make(load_image(src)))
        out, ref = r.output, r.reference
    except ValueError as e:  # ImageEditError is a ValueError
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return
    assert out.mode == ref.mode == "RGB" and out.size == ref.size == (16, 16)
    a = np.asarray(out)
    assert a.dtype == np.uint8 and a.shape == (16, 16, 3)
