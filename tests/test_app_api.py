"""Drive the running app (``python app.py`` in a subprocess) through ``gradio_client``.

Every api_name returns images of the model's size, the same seed gives the same image, concurrent
generate requests are batched, and bad inputs come back as clear error messages.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from app_server import server_fixture  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

R = 32  # the embedded models' resolution
MODEL = "cd_digits32"


server = server_fixture()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))  # not square, not 32 px
    photo.save(d / "photo.png")
    mask = np.zeros((96, 128, 4), np.uint8)
    mask[30:70, 40:90] = (255, 0, 255, 255)
    Image.fromarray(mask, "RGBA").save(d / "mask.png")
    Image.fromarray(np.zeros((96, 128, 4), np.uint8), "RGBA").save(d / "empty_mask.png")
    (d / "not_an_image.png").write_text("this is text, not a PNG")
    return {p.stem: str(p) for p in d.iterdir()}


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _gen(client: Client, seed: int = 0, n: int = 2, steps: int = 1, cls="random", api="/generate"):
    return client.predict(MODEL, steps, "", seed, n, 0.0, cls, 18, api_name=api)


def test_every_api_name_is_published(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for api in ("generate", "colorize", "inpaint", "super_resolve", "interpolate", "denoise",
                "stroke_guided", "generate_steps", "compare_teacher", "model_info"):
        assert f"/{api}" in names


# Every endpoint's parameters as a gradio_client user reads them (view_api): one request's values,
# named in the singular also for the batched /generate, and `model` everywhere.
GEN = ["model", "steps", "ts", "seed", "batch_size", "dropout", "class_label", "heun_steps"]
API_PARAMETERS = {
    "/generate": GEN, "/generate_steps": GEN,
    "/compare_teacher": ["model", "seed", "batch_size", "class_label", "heun_steps"],
    "/colorize": ["model", "image", "steps", "ts", "seed", "class_label"],
    "/inpaint": ["model", "editor", "steps", "ts", "seed", "class_label"],
    "/super_resolve": ["model", "image", "is_low_res", "patch_size", "steps", "ts", "seed", "class_label"],
    "/interpolate": ["model", "mode", "seed_a", "seed_b", "image_a", "image_b", "frames", "steps", "ts",
                     "class_label"],
    "/denoise": ["model", "image", "noise_level", "add_noise", "steps", "seed", "class_label"],
    "/stroke_guided": ["model", "editor", "sigma", "steps", "seed", "class_label"],
    "/model_info": ["model"], "/fetch_model": ["model"], "/model_table": [],
}


def test_every_endpoint_reads_as_documented_in_view_api(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {name: [p["parameter_name"] for p in ep["parameters"]] for name, ep in api.items()} == API_PARAMETERS
    # the names work as keywords: one request to the batched endpoint, by name
    gallery, info = client.predict(model=MODEL, steps=1, ts="", seed=3, batch_size=2, dropout=0.0,
                                   class_label="random", heun_steps=18, api_name="/generate")
    assert len(gallery) == 2 and "one-step" in info


def test_generate_sizes_timing_and_same_seed_same_image(client, server):
    t = time.perf_counter()
    gallery, info = _gen(client, seed=7, n=3)
    latency = time.perf_counter() - t
    assert len(gallery) == 3 and all(_size(g["image"]) == (R, R) for g in gallery)
    assert "images/s" in info and "one-step" in info
    assert gallery[0]["caption"].startswith("seed 7")
    same, _ = _gen(client, seed=7, n=3)  # the same request gives the same images, bit for bit
    assert all(np.array_equal(_pixels(a["image"]), _pixels(b["image"])) for a, b in zip(gallery, same))
    # per-image seeds: image i uses seed + i whatever the batch (equal up to float rounding of
    # batched convolutions)
    again, _ = _gen(client, seed=8, n=1)
    assert np.abs(_pixels(gallery[1]["image"]).astype(int) - _pixels(again[0]["image"])).max() <= 3
    assert np.abs(_pixels(gallery[0]["image"]).astype(int) - _pixels(again[0]["image"])).max() > 10
    print(f"\napp start {server.start_seconds:.1f} s; generate round trip {latency:.3f} s ({info})")
    assert latency < 5.0


def test_generate_multistep_class_and_edm_teacher(client):
    gallery, info = _gen(client, seed=1, n=2, steps=2, cls="7", api="/generate_steps")
    assert [_size(g["image"]) for g in gallery] == [(R, R)] * 2 and "class 7" in gallery[0]["caption"]
    assert "2-step" in info
    teacher, tinfo = client.predict(MODEL, 1, 2, "random", 3, api_name="/compare_teacher")
    assert len(teacher) == 2 and _size(teacher[0]["image"]) == (R, R)
    assert "edm_digits32" in tinfo and "5 network evaluations" in tinfo


def test_concurrent_generate_requests_are_batched(client):
    jobs = [client.submit(MODEL, 1, "", 100 + 10 * i, 1, 0.0, "random", 18, api_name="/generate")
            for i in range(6)]
    infos = [j.result(timeout=60)[1] for j in jobs]
    assert any("batched with" in i for i in infos), infos


def test_edit_endpoints_return_model_size_images(client, files):
    photo = handle_file(files["photo"])
    outs = {
        "colorize": client.predict(MODEL, photo, 2, "", 0, "random", api_name="/colorize"),
        "inpaint": client.predict(MODEL, {"background": photo, "layers": [handle_file(files["mask"])],
                                          "composite": None}, 2, "", 0, "random", api_name="/inpaint"),
        "super_resolve": client.predict(MODEL, photo, False, 4, 2, "", 0, "random", api_name="/super_resolve"),
        "denoise": client.predict(MODEL, photo, 40, True, 1, 0, "random", api_name="/denoise"),
        "stroke_guided": client.predict(MODEL, {"background": photo, "layers": [], "composite": None},
                                        4.0, 2, 0, "random", api_name="/stroke_guided"),
    }
    for api, ((used, out), ref, info) in outs.items():  # (before, after) of the slider, reference
        assert _size(used) == _size(ref) == _size(out) == (R, R), api
        assert " s" in info
    # the reference actually used: grey for colorize, 8 px blocks for x4 super-resolution
    ref = _pixels(outs["colorize"][1]).astype(int)
    assert np.abs(ref[..., 0] - ref[..., 1]).max() <= 1
    sr = _pixels(outs["super_resolve"][1])
    assert np.array_equal(sr[::4, ::4].repeat(4, 0).repeat(4, 1), sr)
    again = client.predict(MODEL, photo, 2, "", 0, "random", api_name="/colorize")
    assert np.array_equal(_pixels(again[0][1]), _pixels(outs["colorize"][0][1]))


def test_interpolate_gallery_and_gif(client, files):
    frames, gif, info = client.predict(MODEL, "seeds", 3, 4, None, None, 5, 1, "", "random",
                                       api_name="/interpolate")
    assert len(frames) == 5 and all(_size(f["image"]) == (R, R) for f in frames)
    with Image.open(gif) as g:
        assert g.format == "GIF" and g.n_frames >= 5
    first, _ = _gen(client, seed=3, n=1)  # frame 0 is seed 3's sample
    assert np.abs(_pixels(frames[0]["image"]).astype(int) - _pixels(first[0]["image"])).max() <= 3
    photo = handle_file(files["photo"])
    frames, gif, _ = client.predict(MODEL, "images", 0, 0, photo, photo, 3, 1, "", "random",
                                    api_name="/interpolate")
    assert len(frames) == 3 and _size(frames[0]["image"]) == (R, R)


@pytest.mark.parametrize("api,args,needle", [
    ("/colorize", lambda f: (MODEL, handle_file(f["not_an_image"]), 2, "", 0, "random"), "image"),
    ("/inpaint", lambda f: (MODEL, {"background": handle_file(f["photo"]), "layers": [handle_file(f["empty_mask"])],
                                    "composite": None}, 2, "", 0, "random"), "mask is empty"),
    ("/inpaint", lambda f: (MODEL, {"background": handle_file(f["photo"]), "layers": [], "composite": None},
                            2, "", 0, "random"), "paint"),
    ("/colorize", lambda f: (MODEL, None, 2, "", 0, "random"), "upload"),
    ("/generate_steps", lambda f: (MODEL, 1, "0,50", 0, 1, 0.0, "random", 18), "ts"),
    ("/generate_steps", lambda f: (MODEL, 1, "", 0, 1, 0.0, "eleven", 18), "class"),
    ("/generate_steps", lambda f: ("no_such_model", 1, "", 0, 1, 0.0, "random", 18), "unknown model"),
    ("/generate", lambda f: ("cd_imagenet64_l2", 1, "", 0, 1, 0.0, "random", 18), "fetch_checkpoints.sh"),
    ("/colorize", lambda f: ("edm_digits32", handle_file(f["photo"]), 2, "", 0, "random"), "consistency model"),
    ("/super_resolve", lambda f: (MODEL, handle_file(f["photo"]), False, 5, 2, "", 0, "random"), "patch"),
])
def test_bad_input_is_a_clear_error_not_a_crash(client, files, api, args, needle):
    with pytest.raises(Exception) as e:
        client.predict(*args(files), api_name=api)
    assert needle.lower() in str(e.value).lower(), str(e.value)


def test_app_still_serves_after_errors(client):
    gallery, _ = _gen(client, seed=0, n=1)
    assert _size(gallery[0]["image"]) == (R, R)


# ----------------------------------------------------------------------------- the published API
def _value_for(p: dict, files: dict[str, str]):
    """A value of exactly the type that view_api prints for parameter ``p`` (its default where
    that has the type; for a Literal, the default's text form when listed, else the first)."""
    typ = p["python_type"]["type"]
    default = p.get("parameter_default")
    if typ.startswith("Literal["):
        listed = [s.strip().strip("'") for s in typ[len("Literal["):-1].split(",")]
        return str(default) if str(default) in listed else listed[0]
    if typ == "filepath":
        return handle_file(files["photo"])
    if typ.startswith("dict(background"):
        return {"background": handle_file(files["photo"]), "layers": [handle_file(files["mask"])],
                "composite": None, "id": None}
    if p["parameter_name"] == "model":
        return MODEL
    cast = {"int": int, "float": float, "str": str, "bool": bool}[typ]
    return cast(default) if default is not None else cast()


def test_every_endpoint_accepts_the_types_view_api_lists(client, files):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, ep in api.items():
        args = [_value_for(p, files) for p in ep["parameters"]]
        client.predict(*args, api_name=name)  # raises on any error


def test_a_20_mb_ts_is_refused_in_under_a_second_with_a_short_message(client):
    t = time.perf_counter()
    with pytest.raises(Exception) as e:
        client.predict(MODEL, 1, "0" * 20_000_000, 0, 1, 0.0, "random", 18, api_name="/generate_steps")
    assert time.perf_counter() - t < 1.0
    assert "at most 4000" in str(e.value) and len(str(e.value)) < 200


@pytest.mark.parametrize("field", ["model", "class_label"])
def test_a_100_kb_name_gives_an_error_under_1_kb(client, field):
    kw = dict(model=MODEL, steps=1, ts="", seed=0, batch_size=1, dropout=0.0, class_label="random",
              heun_steps=18)
    kw[field] = "x" * 100_000
    with pytest.raises(Exception) as e:
        client.predict(**kw, api_name="/generate_steps")
    assert "characters long" in str(e.value) and len(str(e.value)) < 1000


def test_a_data_url_as_a_file_path_gives_a_short_reply_and_short_log_lines(server):
    import httpx
    big = {"path": "data:image/png;base64," + "A" * 2_000_000, "meta": {"_type": "gradio.FileData"}}
    r = httpx.post(f"{server.url}gradio_api/call/colorize", json={"data": [MODEL, big, 2, "", 0, "random"]},
                   timeout=30)
    reply = httpx.get(f"{server.url}gradio_api/call/colorize/{r.json()['event_id']}", timeout=30).text
    assert "event: error" in reply and "File name too long" in reply and len(reply) < 2000
    assert max(map(len, server.log.read_text().splitlines())) <= 1100


def test_model_info_is_one_named_json_output(client):
    ep = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/model_info"]
    assert len(ep["returns"]) == 1, ep["returns"]  # one dict, not 15 unnamed component values
    info = client.predict("cd_imagenet64_l2", api_name="/model_info")
    assert info["name"] == "cd_imagenet64_l2" and info["resolution"] == 64 and info["available"] is False
    assert info["local_file"].endswith("cd_imagenet64_l2.pt")
    assert client.predict(MODEL, api_name="/model_info")["available"] is True


def test_multistep_and_heun_stream_each_step_into_the_gallery(client):
    """generate_steps yields each step's denoised estimates (captioned "step i/n"), then the
    samples; the API's result is the last output, equal to the one-shot samples."""
    for args, n in (((MODEL, 3, "", 4, 2, 0.0, "random", 18), 3), (("edm_digits32", 1, "", 4, 2, 0.0, "random", 5), 5)):
        job = client.submit(*args, api_name="/generate_steps")
        gallery, info = job.result(timeout=60)
        outputs = job.outputs()
        assert len(outputs) == n + 1, [o[1] for o in outputs]
        for i, (g, text) in enumerate(outputs[:-1]):
            assert len(g) == 2 and g[0]["caption"] == f"step {i + 1}/{n}" and text.startswith(f"step {i + 1}/{n}")
        assert "images/s" in info and _pixels(gallery[1]["image"]).shape == (R, R, 3)
        if args[0] == MODEL:  # a consistency model's last step ends on its denoised estimate: the sample
            assert np.array_equal(_pixels(outputs[-2][0][1]["image"]), _pixels(gallery[1]["image"]))
