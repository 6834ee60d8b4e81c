"""Hostile inputs for the app, through its API: odd and broken uploads, out-of-range parameters and
hostile checkpoint files, each with the outcome it must have (a result at the model's size, or an
error whose message contains given words).

``scripts/reliability_report.py`` sends them and writes docs/RELIABILITY.md;
``tests/test_reliability.py`` asserts the same outcomes.
"""
from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

MODEL = "cd_digits32"
PX = 32  # the embedded models' resolution
PWNED = "PWNED"  # the file the pickled callable would create in the checkpoint directory


# ----------------------------------------------------------------------------- hostile files
class _Evil:
    """Unpickling this runs ``touch <marker>`` (what a hostile .pt would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_uploads(folder: Path) -> dict[str, str]:
    """Hostile and unusual uploads (and a normal photo and masks) as files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    f = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        img.save(folder / name, **kw)
        f[name.split(".")[0]] = str(folder / name)
    save("photo.png", Image.fromarray(rgb))
    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 30, 30)))
    save("bomb_10000.png", Image.new("L", (10_000, 10_000)))  # 100 Mpx (~100 kB on disk)
    save("grey16.png", Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    save("grey_alpha.png", Image.fromarray(rng.integers(0, 256, (40, 50, 2), dtype=np.uint8), "LA"))
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    save("huge_aspect.png", Image.new("RGB", (4000, 1), (0, 128, 0)))
    mask = np.zeros((40, 50, 4), np.uint8)
    mask[10:30, 15:35] = (255, 0, 255, 255)
    save("mask.png", Image.fromarray(mask, "RGBA"))
    save("empty_mask.png", Image.fromarray(np.zeros((40, 50, 4), np.uint8), "RGBA"))
    small = np.zeros((20, 20, 4), np.uint8)
    small[5:10, 5:10] = 255
    save("mask_20px.png", Image.fromarray(small, "RGBA"))
    (folder / "not_an_image.png").write_text("#!/bin/sh\necho this is a script renamed .png\n")
    f["not_an_image"] = str(folder / "not_an_image.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f["truncated"] = str(folder / "truncated.png")
    (folder / "empty.png").write_bytes(b"")
    f["empty"] = str(folder / "empty.png")
    return f


def seed_checkpoints(ckpt: Path) -> dict[str, str]:
    """Hostile files under released model names in the checkpoint directory (before the app starts).

    Returns {model name: what is wrong with its file}."""
    import torch

    from cm_core.models.network import build_unet
    from cm_core.models.registry import get_spec
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "evil": _Evil(str(ckpt / PWNED))},
               ckpt / "cd_imagenet64_l2.pt")
    buf = io.BytesIO()
    torch.save({f"w{i}": torch.randn(64, 64) for i in range(8)}, buf)
    (ckpt / "cd_imagenet64_lpips.pt").write_bytes(buf.getvalue()[:20_000])
    torch.save(build_unet(get_spec(MODEL).arch).state_dict(), ckpt / "ct_imagenet64.pt")
    (ckpt / "cd_cat256_l2.pt").write_bytes(np.random.default_rng(1).bytes(65536))
    (ckpt / "cd_bedroom256_l2.pt").write_bytes(b"")
    return {"cd_imagenet64_l2": "pickled callable (would run `touch PWNED`)",
            "cd_imagenet64_lpips": "truncated .pt (20 kB of a zip archive)",
            "ct_imagenet64": "wrong architecture (32 px digits weights)",
            "cd_cat256_l2": "corrupt .pt (64 kB of random bytes)",
            "cd_bedroom256_l2": "empty .pt (0 bytes, an interrupted copy)"}


def lying_safetensors(path: Path) -> None:
    """A safetensors header that claims a 4 MB tensor over 16 bytes of data."""
    import json
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)


# ----------------------------------------------------------------------------- the matrix
@dataclass
class Case:
    kind: str                          # upload | parameter | checkpoint | recovery
    name: str                          # what was tried
    api: str
    args: Callable[[], tuple]          # built when sent (handle_file needs the client's module)
    expect: tuple[str, ...] = ()       # () = must succeed; else substrings the error must contain
    before: Callable[[], None] | None = None


@dataclass
class Outcome:
    case: Case
    succeeded: bool
    message: str
    seconds: float

    @property
    def as_expected(self) -> bool:
        if not self.case.expect:
            return self.succeeded
        return not self.succeeded and matches(self.message, self.case.expect)


def editor_value(bg, layers=()):
    """An ImageEditor value: background file ``bg`` and painted ``layers`` (file paths)."""
    from gradio_client import handle_file
    return {"background": handle_file(bg) if bg else None, "layers": [handle_file(x) for x in layers],
            "composite": None}


def gen_args(model=MODEL, steps=1, ts="", seed=0, batch=2, dropout=0.0, cls="random", heun=18):
    """The /generate and /generate_steps arguments, in the endpoint's order."""
    return (model, steps, ts, seed, batch, dropout, cls, heun)


def matrix(f: dict[str, str], ckpt: Path | None = None, embedded: Path | None = None) -> list[Case]:
    """Every hostile input, in order. ``ckpt``/``embedded``: the app's checkpoint directories (for
    the checkpoint cases; :func:`seed_checkpoints` must have run before the app started)."""
    from gradio_client import handle_file as h
    cz = lambda img, model=MODEL: (model, h(img), 2, "", 0, "random")  # noqa: E731 - colorize args
    ok = ()
    cases = [
        # uploads: odd but valid ones succeed at the model's size; broken ones get a message
        Case("upload", "1x1 image", "/colorize", lambda: cz(f["one_pixel"]), ok),
        Case("upload", "4000x1 image", "/colorize", lambda: cz(f["huge_aspect"]), ok),
        Case("upload", "10000x10000 (decompression bomb, 100 Mpx)", "/colorize", lambda: cz(f["bomb_10000"]),
             ("too large",)),
        Case("upload", "16-bit greyscale PNG", "/colorize", lambda: cz(f["grey16"]), ok),
        Case("upload", "CMYK JPEG", "/colorize", lambda: cz(f["cmyk"]), ok),
        Case("upload", "palette PNG", "/colorize", lambda: cz(f["palette"]), ok),
        Case("upload", "greyscale+alpha PNG", "/colorize", lambda: cz(f["grey_alpha"]), ok),
        Case("upload", "animated GIF (first frame)", "/colorize", lambda: cz(f["animated"]), ok),
        Case("upload", "shell script renamed .png", "/colorize", lambda: cz(f["not_an_image"]),
             ("could not read", "upload a PNG")),
        Case("upload", "truncated PNG", "/colorize", lambda: cz(f["truncated"]), ("damaged|could not read",)),
        Case("upload", "empty file .png", "/colorize", lambda: cz(f["empty"]), ("could not read",)),
        Case("upload", "no image", "/colorize", lambda: (MODEL, None, 2, "", 0, "random"), ("upload",)),
        Case("upload", "inpaint: mask", "/inpaint",
             lambda: (MODEL, editor_value(f["photo"], [f["mask"]]), 2, "", 0, "random"), ok),
        Case("upload", "inpaint: empty mask", "/inpaint",
             lambda: (MODEL, editor_value(f["photo"], [f["empty_mask"]]), 2, "", 0, "random"), ("mask is empty",)),
        Case("upload", "inpaint: mask of another size (20x20 on 50x40)", "/inpaint",
             lambda: (MODEL, editor_value(f["photo"], [f["mask_20px"]]), 2, "", 0, "random"), ("mask is 20x20",)),
        Case("upload", "inpaint: no painted layer", "/inpaint",
             lambda: (MODEL, editor_value(f["photo"]), 2, "", 0, "random"), ("paint",)),
        Case("upload", "inpaint: bomb background", "/inpaint",
             lambda: (MODEL, editor_value(f["bomb_10000"], [f["mask"]]), 2, "", 0, "random"), ("too large",)),
        Case("upload", "inpaint: non-image mask layer", "/inpaint",
             lambda: (MODEL, editor_value(f["photo"], [f["not_an_image"]]), 2, "", 0, "random"), ("could not read",)),
        Case("upload", "stroke-guided: non-image painting", "/stroke_guided",
             lambda: (MODEL, editor_value(f["not_an_image"]), 4.0, 2, 0, "random"), ("could not read",)),
        Case("upload", "stroke-guided: palette painting", "/stroke_guided",
             lambda: (MODEL, editor_value(f["palette"]), 4.0, 2, 0, "random"), ok),
        Case("upload", "super-resolve: 1x1 as low-res", "/super_resolve",
             lambda: (MODEL, h(f["one_pixel"]), True, 4, 2, "", 0, "random"), ok),
        Case("upload", "super-resolve: bomb", "/super_resolve",
             lambda: (MODEL, h(f["bomb_10000"]), False, 4, 2, "", 0, "random"), ("too large",)),
        Case("upload", "denoise: 16-bit greyscale", "/denoise",
             lambda: (MODEL, h(f["grey16"]), 40, True, 1, 0, "random"), ok),
        Case("upload", "interpolate: CMYK and animated GIF", "/interpolate",
             lambda: (MODEL, "images", 0, 1, h(f["cmyk"]), h(f["animated"]), 3, 1, "", "random"), ok),
        Case("upload", "interpolate: one image missing", "/interpolate",
             lambda: (MODEL, "images", 0, 1, h(f["cmyk"]), None, 3, 1, "", "random"), ("image b",)),
        # parameters
        Case("parameter", "batch size 0", "/generate", lambda: gen_args(batch=0), ("must be in [|must be >=",)),
        Case("parameter", "batch size 17 (> CM_MAX_BATCH 16)", "/generate", lambda: gen_args(batch=17), ("must be in [",)),
        Case("parameter", "batch size 1000 (progress endpoint)", "/generate_steps", lambda: gen_args(batch=1000),
             ("must be in [",)),
        Case("parameter", "steps 0", "/generate_steps", lambda: gen_args(steps=0), ("must be in [|must be >=",)),
        Case("parameter", "steps 40 on a 40-point grid", "/generate_steps", lambda: gen_args(steps=40), ("steps",)),
        Case("parameter", "ts 0,50 (off the grid)", "/generate_steps", lambda: gen_args(ts="0,50"), ("ts",)),
        Case("parameter", "ts a,b", "/generate_steps", lambda: gen_args(ts="a,b"), ("comma-separated",)),
        Case("parameter", "ts 0,22,22 (not increasing)", "/generate_steps", lambda: gen_args(ts="0,22,22"),
             ("increasing",)),
        Case("parameter", "ts with 5000 indices on a 10^6 grid", "/generate_steps",
             lambda: gen_args(ts=",".join(map(str, range(5001))) + "/1000000"), ("at most",)),
        Case("parameter", "seed -1", "/generate_steps", lambda: gen_args(seed=-1), ("must be in [|must be >=",)),
        Case("parameter", "seed 2^63", "/generate_steps", lambda: gen_args(seed=2 ** 63), ("seed",)),
        Case("parameter", "dropout 0.95", "/generate_steps", lambda: gen_args(dropout=0.95), ("must be in [",)),
        Case("parameter", "dropout -0.1", "/generate_steps", lambda: gen_args(dropout=-0.1), ("must be in [|must be >=",)),
        Case("parameter", "class 'eleven'", "/generate_steps", lambda: gen_args(cls="eleven"), ("class",)),
        Case("parameter", "class 10 of 10", "/generate_steps", lambda: gen_args(cls="10"), ("class",)),
        Case("parameter", "unknown model", "/generate_steps", lambda: gen_args(model="no_such_model"),
             ("unknown model",)),
        Case("parameter", "Heun steps 1 (EDM)", "/generate_steps", lambda: gen_args(model="edm_digits32", heun=1),
             ("must be in [|must be >=",)),
        Case("parameter", "patch size 5", "/super_resolve",
             lambda: (MODEL, h(f["photo"]), False, 5, 2, "", 0, "random"), ("patch",)),
        Case("parameter", "patch size 0", "/super_resolve",
             lambda: (MODEL, h(f["photo"]), False, 0, 2, "", 0, "random"), ("patch factor",)),
        Case("parameter", "patch size 64", "/super_resolve",
             lambda: (MODEL, h(f["photo"]), False, 64, 2, "", 0, "random"), ("patch factor",)),
        Case("parameter", "noise level 300", "/denoise",
             lambda: (MODEL, h(f["photo"]), 300, True, 1, 0, "random"), ("must be in [",)),
        Case("parameter", "frames 1000", "/interpolate",
             lambda: (MODEL, "seeds", 0, 1, None, None, 1000, 1, "", "random"), ("must be in [",)),
        Case("parameter", "sigma 0 (stroke-guided)", "/stroke_guided",
             lambda: (MODEL, editor_value(f["photo"]), 0.0, 2, 0, "random"), ("must be in [|must be >=",)),
        Case("parameter", "editing with an EDM teacher", "/colorize", lambda: cz(f["photo"], "edm_digits32"),
             ("consistency model",)),
    ]
    if ckpt is not None:
        serving = lambda: Case("recovery", f"{MODEL} still served", "/generate", lambda: gen_args(), ok)  # noqa: E731
        checks = [("cd_imagenet64_l2", "pickled callable", ("cd_imagenet64_l2.pt", "refused", "state_dict")),
                  ("cd_imagenet64_lpips", "truncated .pt", ("cd_imagenet64_lpips.pt", "truncated or corrupt")),
                  ("ct_imagenet64", "wrong architecture .pt", ("ct_imagenet64.pt", "do not fit this architecture")),
                  ("cd_cat256_l2", "random bytes .pt", ("cd_cat256_l2.pt", "refused")),
                  ("cd_bedroom256_l2", "empty (0-byte) .pt", ("cd_bedroom256_l2.pt", "empty"))]
        for model, what, needles in checks:
            cases.append(Case("checkpoint", what, "/generate_steps", lambda m=model: gen_args(model=m, batch=1),
                              needles))
            cases.append(serving())
        if embedded is not None:
            good = embedded / "ct_digits32.safetensors"
            saved: dict[str, bytes] = {}

            def corrupt() -> None:
                saved["ct"] = good.read_bytes()
                lying_safetensors(good)

            def restore() -> None:
                good.write_bytes(saved["ct"])
            cases += [
                Case("checkpoint", "safetensors header that lies about sizes", "/generate_steps",
                     lambda: gen_args(model="ct_digits32", batch=1), ("ct_digits32.safetensors", "safetensors"),
                     before=corrupt),
                serving(),
                Case("recovery", "same model after the file is fixed (failed load not cached)", "/generate_steps",
                     lambda: gen_args(model="ct_digits32", batch=1), ok, before=restore),
            ]
    return cases


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def check_result(api: str, result) -> str:
    """The info line of a successful result; raises AssertionError unless its images are model-sized."""
    if api in ("/generate", "/generate_steps", "/compare_teacher"):
        gallery, info = result
        assert gallery and all(_size(g["image"]) == (PX, PX) for g in gallery), f"{api}: bad gallery"
        return info
    if api == "/interpolate":
        frames, gif, info = result
        assert frames and all(_size(fr["image"]) == (PX, PX) for fr in frames), f"{api}: bad frames"
        return info
    (used, out), ref, info = result  # the before/after slider, the reference, the summary
    assert _size(used) == _size(ref) == _size(out) == (PX, PX), f"{api}: outputs not {PX}x{PX}"
    return info


def run_case(client, case: Case, timeout: float = 60.0) -> Outcome:
    if case.before is not None:
        case.before()
    t = time.perf_counter()
    try:
        res = client.submit(*case.args(), api_name=case.api).result(timeout=timeout)
        msg, ok = check_result(case.api, res), True
    except Exception as e:  # noqa: BLE001 - every failure is recorded with its message
        msg, ok = f"{type(e).__name__}: {e}" if not str(e) else str(e), False
    return Outcome(case, ok, " ".join(msg.split()), time.perf_counter() - t)


def matches(message: str, needles: tuple[str, ...]) -> bool:
    """Every needle (``a|b``: either) occurs in ``message``, case-insensitively."""
    return all(any(alt in message.lower() for alt in n.lower().split("|")) for n in needles)
