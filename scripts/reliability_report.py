#!/usr/bin/env python
"""Reliability figures for docs/RELIABILITY.md: hostile inputs and a concurrent burst, through the API.

Starts ``python app.py`` on a loopback port (random-weight embedded models, a scratch checkpoint
directory seeded with hostile checkpoint files; see ``tests/app_server.py``), then

1. sends every case of :func:`matrix` (hostile uploads, out-of-range parameters, hostile
   checkpoints) one by one through ``gradio_client`` and records the outcome and the message;
2. sends ``--requests`` (50) concurrent requests of mixed kinds from a thread pool, each with a
   timeout, while sampling the server's resident memory (RSS) with psutil;
3. checks that the app still answers, and prints a markdown report (``--out``: also writes it).

    CM_TORCH_THREADS=1 .venv/bin/python scripts/reliability_report.py --out docs/RELIABILITY.md

``tests/test_reliability.py`` and ``tests/test_load.py`` run the same matrix and burst.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
QUEUE_FULL = "queue is full"


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
        return not self.succeeded and _matches(self.message, self.case.expect)


def _editor(bg, layers=()):
    from gradio_client import handle_file
    return {"background": handle_file(bg) if bg else None, "layers": [handle_file(x) for x in layers],
            "composite": None}


def _gen(model=MODEL, steps=1, ts="", seed=0, batch=2, dropout=0.0, cls="random", heun=18):
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
             lambda: (MODEL, _editor(f["photo"], [f["mask"]]), 2, "", 0, "random"), ok),
        Case("upload", "inpaint: empty mask", "/inpaint",
             lambda: (MODEL, _editor(f["photo"], [f["empty_mask"]]), 2, "", 0, "random"), ("mask is empty",)),
        Case("upload", "inpaint: mask of another size (20x20 on 50x40)", "/inpaint",
             lambda: (MODEL, _editor(f["photo"], [f["mask_20px"]]), 2, "", 0, "random"), ("mask is 20x20",)),
        Case("upload", "inpaint: no painted layer", "/inpaint",
             lambda: (MODEL, _editor(f["photo"]), 2, "", 0, "random"), ("paint",)),
        Case("upload", "inpaint: bomb background", "/inpaint",
             lambda: (MODEL, _editor(f["bomb_10000"], [f["mask"]]), 2, "", 0, "random"), ("too large",)),
        Case("upload", "inpaint: non-image mask layer", "/inpaint",
             lambda: (MODEL, _editor(f["photo"], [f["not_an_image"]]), 2, "", 0, "random"), ("could not read",)),
        Case("upload", "stroke-guided: non-image painting", "/stroke_guided",
             lambda: (MODEL, _editor(f["not_an_image"]), 4.0, 2, 0, "random"), ("could not read",)),
        Case("upload", "stroke-guided: palette painting", "/stroke_guided",
             lambda: (MODEL, _editor(f["palette"]), 4.0, 2, 0, "random"), ok),
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
        Case("parameter", "batch size 0", "/generate", lambda: _gen(batch=0), ("must be in [|must be >=",)),
        Case("parameter", "batch size 17 (> CM_MAX_BATCH 16)", "/generate", lambda: _gen(batch=17), ("must be in [",)),
        Case("parameter", "batch size 1000 (progress endpoint)", "/generate_steps", lambda: _gen(batch=1000),
             ("must be in [",)),
        Case("parameter", "steps 0", "/generate_steps", lambda: _gen(steps=0), ("must be in [|must be >=",)),
        Case("parameter", "steps 40 on a 40-point grid", "/generate_steps", lambda: _gen(steps=40), ("steps",)),
        Case("parameter", "ts 0,50 (off the grid)", "/generate_steps", lambda: _gen(ts="0,50"), ("ts",)),
        Case("parameter", "ts a,b", "/generate_steps", lambda: _gen(ts="a,b"), ("comma-separated",)),
        Case("parameter", "ts 0,22,22 (not increasing)", "/generate_steps", lambda: _gen(ts="0,22,22"),
             ("increasing",)),
        Case("parameter", "ts with 5000 indices on a 10^6 grid", "/generate_steps",
             lambda: _gen(ts=",".join(map(str, range(5001))) + "/1000000"), ("at most",)),
        Case("parameter", "seed -1", "/generate_steps", lambda: _gen(seed=-1), ("must be in [|must be >=",)),
        Case("parameter", "seed 2^63", "/generate_steps", lambda: _gen(seed=2 ** 63), ("seed",)),
        Case("parameter", "dropout 0.95", "/generate_steps", lambda: _gen(dropout=0.95), ("must be in [",)),
        Case("parameter", "dropout -0.1", "/generate_steps", lambda: _gen(dropout=-0.1), ("must be in [|must be >=",)),
        Case("parameter", "class 'eleven'", "/generate_steps", lambda: _gen(cls="eleven"), ("class",)),
        Case("parameter", "class 10 of 10", "/generate_steps", lambda: _gen(cls="10"), ("class",)),
        Case("parameter", "unknown model", "/generate_steps", lambda: _gen(model="no_such_model"),
             ("unknown model",)),
        Case("parameter", "Heun steps 1 (EDM)", "/generate_steps", lambda: _gen(model="edm_digits32", heun=1),
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
             lambda: (MODEL, _editor(f["photo"]), 0.0, 2, 0, "random"), ("must be in [|must be >=",)),
        Case("parameter", "editing with an EDM teacher", "/colorize", lambda: cz(f["photo"], "edm_digits32"),
             ("consistency model",)),
    ]
    if ckpt is not None:
        serving = lambda: Case("recovery", f"{MODEL} still served", "/generate", lambda: _gen(), ok)  # noqa: E731
        checks = [("cd_imagenet64_l2", "pickled callable", ("cd_imagenet64_l2.pt", "refused", "state_dict")),
                  ("cd_imagenet64_lpips", "truncated .pt", ("cd_imagenet64_lpips.pt", "truncated or corrupt")),
                  ("ct_imagenet64", "wrong architecture .pt", ("ct_imagenet64.pt", "do not fit this architecture")),
                  ("cd_cat256_l2", "random bytes .pt", ("cd_cat256_l2.pt", "refused")),
                  ("cd_bedroom256_l2", "empty (0-byte) .pt", ("cd_bedroom256_l2.pt", "empty"))]
        for model, what, needles in checks:
            cases.append(Case("checkpoint", what, "/generate_steps", lambda m=model: _gen(model=m, batch=1),
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
                     lambda: _gen(model="ct_digits32", batch=1), ("ct_digits32.safetensors", "safetensors"),
                     before=corrupt),
                serving(),
                Case("recovery", "same model after the file is fixed (failed load not cached)", "/generate_steps",
                     lambda: _gen(model="ct_digits32", batch=1), ok, before=restore),
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


def _matches(message: str, needles: tuple[str, ...]) -> bool:
    """Every needle (``a|b``: either) occurs in ``message``, case-insensitively."""
    return all(any(alt in message.lower() for alt in n.lower().split("|")) for n in needles)



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
        ("generate", "/generate", lambda i: _gen(seed=i, batch=2), ()),
        ("generate (batched)", "/generate", lambda i: _gen(seed=100 + i, batch=1), ()),
        ("generate_steps", "/generate_steps", lambda i: _gen(steps=2, seed=i, batch=2, cls=str(i % 10)), ()),
        ("colorize", "/colorize", lambda i: (MODEL, h(f["photo"]), 2, "", i, "random"), ()),
        ("inpaint", "/inpaint", lambda i: (MODEL, _editor(f["photo"], [f["mask"]]), 2, "", i, "random"), ()),
        ("super_resolve", "/super_resolve", lambda i: (MODEL, h(f["photo"]), False, 4, 2, "", i, "random"), ()),
        ("denoise", "/denoise", lambda i: (MODEL, h(f["photo"]), 40, True, 1, i, "random"), ()),
        ("interpolate", "/interpolate", lambda i: (MODEL, "seeds", i, i + 1, None, None, 4, 1, "", "random"), ()),
        ("stroke_guided", "/stroke_guided", lambda i: (MODEL, _editor(f["palette"]), 4.0, 2, i, "random"), ()),
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
            elif expect and _matches(msg, expect):
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
    jobs = [client.submit(*_gen(steps=steps, seed=i, batch=batch), api_name="/generate_steps")
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
            jobs = [client.submit(*_gen(seed=(r * n + i) * batch, batch=batch), api_name="/generate")
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
        print(f"soak round {r + 1}/{rounds}: RSS {_mb(res.rounds[-1][0])} (peak {_mb(rss.peak)}), {wall:.1f} s, "
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


# ----------------------------------------------------------------------------- report
def _cpu_name() -> str:
    """The CPU's model name, with its family and model numbers (speed figures depend on them)."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    return f"{info.get('model name', '?')}, family {info.get('cpu family', '?')} model {info.get('model', '?')}"


def _mb(b: int) -> str:
    return f"{b / 2 ** 20:.0f} MiB"


def markdown(outcomes: list[Outcome], b: BurstResult | None, q: Counter | None, pwned: bool,
             start_s: float, cmd: str) -> str:
    import gradio
    import torch
    tried = len(outcomes)
    good = sum(o.as_expected for o in outcomes)
    crashes = [o for o in outcomes if not o.as_expected]
    lines = [
        f"Measured with `{cmd}` on {platform.machine()} Linux, {os.cpu_count()} CPU cores (shared, {_cpu_name()}), "
        f"Python {platform.python_version()}, torch {torch.__version__}, gradio {gradio.__version__}; "
        f"the app on 127.0.0.1 with random-weight embedded models (32 px), "
        f"`CM_TORCH_THREADS={os.environ.get('CM_TORCH_THREADS', '1')}`, app start {start_s:.1f} s.",
        "",
        f"**Hostile inputs: {tried} tried, {good} handled as specified** (valid-but-odd inputs give "
        f"{PX}x{PX} results; the others a clear message), {len(crashes)} not"
        + (f" ({', '.join(o.case.name for o in crashes)})" if crashes else "")
        + f"; the pickled callable ran: **{'YES' if pwned else 'no'}**; the server never went down.",
        "",
        "| # | kind | input | endpoint | outcome | message / info | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, 1):
        status = ("ok" if o.succeeded else "clear error") if o.as_expected else "UNEXPECTED"
        msg = o.message.replace("|", "\\|")
        msg = msg if len(msg) <= 160 else msg[:157] + "..."
        lines.append(f"| {i} | {o.case.kind} | {o.case.name} | `{o.case.api}` | {status} | {msg} | {o.seconds:.2f} |")
    if b is not None:
        lines += [
            "",
            f"**Load: {b.requests} concurrent requests** (a thread pool of {b.requests}, all released together, "
            "mixed endpoints, one in ten invalid on purpose), each with a 60 s timeout:",
            "",
            "| requests | served | ok | clear error (expected) | queue full | timeouts | failures | "
            "p50 latency | p95 latency | max latency | wall | RSS before | peak RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {b.requests} | {b.served} | {b.outcomes['ok']} | {b.outcomes['clear error']} | "
            f"{b.outcomes['queue full']} | {b.outcomes['timeout']} | {b.outcomes['failure']} | "
            f"{b.pct(0.5):.2f} s | {b.pct(0.95):.2f} s | {max(b.latencies):.2f} s | {b.wall:.1f} s | "
            f"{_mb(b.rss_baseline)} | {_mb(b.rss_peak)} |",
            "",
            "Per kind: " + "; ".join(f"{k}: " + ", ".join(f"{v} {s}" for s, v in c.items())
                                     for k, c in b.by_kind.items()) + ".",
        ]
        if b.failures:
            lines += ["", "Failures: " + "; ".join(f"{k}: {m}" for k, m in b.failures)]
    if q is not None:
        lines += ["", f"**Queue bound**: a server started with `CM_QUEUE_SIZE=2` given "
                  f"{sum(q.values())} simultaneous 39-step requests: "
                  + ", ".join(f"{v} {k}" for k, v in q.items())
                  + " (Gradio's message: \"Queue is full! Please try again.\")."]
    return "\n".join(lines) + "\n"


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-queue-check", action="store_true")
    ap.add_argument("--soak-rounds", type=int, default=10, help="rounds of the memory soak (0: none)")
    ap.add_argument("--soak-requests", type=int, default=40, help="concurrent requests per soak round")
    ap.add_argument("--soak-batch", type=int, default=16, help="images per soak request")
    ap.add_argument("--soak-only", action="store_true", help="only the soak (no matrix, burst, queue check)")
    ap.add_argument("--out", type=Path, help="also write the report here (markdown)")
    return ap.parse_args(argv)


def _hostile_and_burst(tmp: Path, a: argparse.Namespace) -> tuple[str, bool]:
    """The matrix, the burst and the queue check; (their report, whether all went as expected)."""
    from app_server import AppServer
    from gradio_client import Client
    files = make_uploads(tmp / "uploads")
    seed_checkpoints(tmp / "app" / "checkpoints")
    srv = AppServer(tmp / "app", {"CM_CACHE_EXAMPLES": "0"})
    try:
        client = Client(srv.url, verbose=False)
        outcomes = []
        for c in matrix(files, tmp / "app" / "checkpoints", tmp / "app" / "embedded"):
            o = run_case(client, c, a.timeout)
            outcomes.append(o)
            print(f"{'ok ' if o.as_expected else 'BAD'} {c.kind:10s} {c.name:50s} {o.message[:90]}", flush=True)
        pwned = (tmp / "app" / "checkpoints" / PWNED).exists()
        b = burst(srv.url, srv.proc.pid, files, a.requests, a.timeout)
        print(f"burst: {dict(b.outcomes)} in {b.wall:.1f} s, peak RSS {_mb(b.rss_peak)}", flush=True)
        run_case(client, Case("recovery", "after the burst", "/generate", lambda: _gen()))
        assert srv.proc.poll() is None, "the server died"
        start_s = srv.start_seconds
    finally:
        srv.stop()
    q = None if a.no_queue_check else queue_full_check(tmp / "queue")
    cmd = "CM_TORCH_THREADS=1 .venv/bin/python scripts/reliability_report.py" + (
        f" --requests {a.requests}" if a.requests != 50 else "")
    ok = all(o.as_expected for o in outcomes) and not pwned and not b.failures
    return markdown(outcomes, b, q, pwned, start_s, cmd), ok


def _soak(tmp: Path, a: argparse.Namespace) -> tuple[str, bool]:
    """The memory soak on a fresh server; (its report, whether it was flat and failed nothing)."""
    from app_server import AppServer
    srv = AppServer(tmp / "soak", {"CM_CACHE_EXAMPLES": "0"})
    try:
        s = soak(srv.url, srv.proc.pid, a.soak_rounds, a.soak_requests, a.soak_batch, max(a.timeout, 300.0))
    finally:
        srv.stop()
    ok = s.last_spread() <= 0.10 and not any(r[2] for r in s.rounds)
    return soak_markdown(s, a.soak_requests, a.soak_batch), ok


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    os.environ.setdefault("CM_TORCH_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    parts, ok = [], True
    with tempfile.TemporaryDirectory(prefix="cm-reliability-") as d:
        if not a.soak_only:
            report, ok = _hostile_and_burst(Path(d), a)
            parts.append(report)
        if a.soak_rounds > 0:
            report, soak_ok = _soak(Path(d), a)
            parts.append(report)
            ok = ok and soak_ok
    report = "\n\n".join(parts)
    print(report)
    if a.out:
        a.out.write_text(_doc(report))
    return 0 if ok else 1


def _doc(report: str) -> str:
    return f"""# Reliability and security

What a public deployment gets thrown at it, and what the app does. The figures below come from
`scripts/reliability_report.py`, which starts the app on a loopback port and drives it through
`gradio_client`; `tests/test_reliability.py` and `tests/test_load.py` assert the same behaviour.

**Checkpoints.** Original `.pt` files are read with `torch.load(weights_only=True)`: a pickled
callable is refused before anything runs. Truncated, corrupt or wrong-architecture files and
safetensors headers that lie about sizes give an error naming the file and the fix; a model that
fails to load is not cached (fix the file and the next request loads it) and the other models keep
serving. Downloads go to `<name>.pt.part`, are checked against the server's length and the
registry's size / sha256 where recorded, and only then renamed.

**Uploads.** Every upload is checked from its header before Gradio decodes it: anything that is not
an image, and anything over Pillow's pixel limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89.5 Mpx:
decompression bombs), is refused at once with a message. The library converts every mode itself
(16-bit rescaled, CMYK, palette, alpha composited on white, first frame of animations); masks that
are empty, cover everything or have another size get a message saying what to paint.

**Parameters and limits.** Steps, ts (at most {200} evaluations per image, on any grid), Heun steps
(<= 200), batch size (<= `CM_MAX_BATCH`, default 16, so one request cannot take all GPU memory),
seed, dropout (<= 0.9), patch size (must divide the model size), noise level, frames and sigma are
validated by the UI components and again by `cm_core.service`. Text fields are refused by length
before they are parsed (a 20 MB `ts` in 0.25 s), every message quotes at most 200 characters of
input, and every error reply and log line is cut to 1000 characters. The queue holds at most
`CM_QUEUE_SIZE` (64) waiting requests; beyond that a request gets "Queue is full" at once. Model
runs take one of `CM_CONCURRENCY` compute slots (default 1); `CM_WAITERS` (8) more requests wait
past the queue for a download or a slot, with a progress message saying which.

**Clients that leave, Hubs that hang.** A request whose client presses Stop, cancels or drops its
connection stops at its next progress call (one network evaluation; two for a Heun step) and frees
its slot: the next request starts at once (`tests/test_cancel.py`). A model download runs in a
background job of its own, joined by every visitor of that model, with a connection timeout
(`CM_HUB_TIMEOUT_S`, 20 s) and a deadline (`CM_FETCH_DEADLINE_S`, 30 min): a Hub that accepts and
never answers, or that cuts the transfer, fails the fetch with its cause while the embedded models
are served in normal time, and nothing complete-looking is left (`tests/test_hub_faults.py`).

**Memory.** When the compute slots have been idle for a second the allocator's free memory goes back
to the system (glibc `malloc_trim`), and Gradio's cached output files older than an hour are deleted
hourly. The soak below shows the server's RSS round after round.

**Faults.** A CUDA out-of-memory error during a request evicts the other cached models, empties
the CUDA cache and retries once; if it fails again the user gets "out of GPU memory ...: use a
smaller batch size" and the next request runs normally.

## Measured

{report}
"""


if __name__ == "__main__":
    sys.exit(main())
