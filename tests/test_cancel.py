"""A request whose client leaves stops computing: every request function stops at its next
progress call (one network evaluation; two for a Heun step), compute slots are given back, and in
the running app a cancelled long Heun job leaves the worker idle and the next request starts at once."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from cm_core import service as S
from cm_core.models.checkpoints import load_denoiser
from cm_core.service import model_cache

MODEL, EDM = "cd_digits32", "edm_digits32"


@pytest.fixture
def evaluations(monkeypatch) -> list[str]:
    """Network evaluations of the embedded models (exact path), counted by a forward hook."""
    monkeypatch.setenv("CM_FAST", "0")
    calls: list[str] = []

    def loader(name, device=None, dtype=None):
        den = load_denoiser(name, device=device, dtype=dtype)
        den.register_forward_pre_hook(lambda m, a: calls.append(name))
        return den
    monkeypatch.setattr(model_cache, "_CACHE", S.ModelCache(capacity=3, device="cpu", loader=loader))
    return calls


def _leave(frac: float, desc: str) -> None:
    raise S.Cancelled("the client left")


IMG = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
MASK = Image.new("RGBA", (50, 40), (0, 0, 0, 0))
MASK.paste((255, 0, 255, 255), (10, 10, 30, 30))
REQUESTS = {
    "multistep": lambda p: S.generate(S.GenerateRequest(MODEL, steps=5, batch_size=2), p),
    "heun": lambda p: S.generate(S.GenerateRequest(EDM, heun_steps=10, batch_size=2), p),
    "compare": lambda p: S.compare_with_teacher(S.GenerateRequest(MODEL, batch_size=2), p),
    "colorize": lambda p: S.colorize(MODEL, IMG, steps=5, progress=p),
    "inpaint": lambda p: S.inpaint(MODEL, IMG, MASK,
                                   steps=5, progress=p),
    "super_resolve": lambda p: S.super_resolve(MODEL, IMG, steps=5, progress=p),
    "denoise": lambda p: S.denoise(MODEL, IMG, steps=5, progress=p),
    "stroke_guided": lambda p: S.stroke_guided(MODEL, IMG, steps=5, progress=p),
    "interpolate_seeds": lambda p: S.interpolate(MODEL, frames=4, steps=5, progress=p),
    "interpolate_images": lambda p: S.interpolate(MODEL, mode="images", image_a=IMG, image_b=IMG, frames=4,
                                                  steps=5, progress=p),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_every_request_stops_at_its_next_progress_call(evaluations, name):
    REQUESTS[name](None)  # loads the model; the full run for comparison
    full = len(evaluations)
    evaluations.clear()
    with pytest.raises(S.Cancelled):
        REQUESTS[name](_leave)
    per_check = 2 if name in ("heun", "compare") else 1  # a Heun step evaluates twice
    assert 1 <= len(evaluations) <= per_check < full, (name, evaluations, full)


def test_a_waiting_request_gives_up_its_place_when_its_client_leaves():
    slots = S.ComputeSlots(1)
    entered = threading.Event()
    release = threading.Event()

    def hold():
        with slots.hold():
            entered.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    entered.wait(5)
    seen = []

    def waiting(frac, desc):
        seen.append(desc)
        if len(seen) == 3:
            raise S.Cancelled("the client left")
    with pytest.raises(S.Cancelled):
        with slots.hold(waiting):
            pass
    assert "waiting for a free worker (1 busy, 1 waiting)" in seen[0] and slots.waiting == 0
    release.set()
    t.join(5)
    with slots.hold(waiting):  # the slot is free again
        assert slots.busy == 1
    assert slots.busy == 0


def test_a_run_that_raises_gives_its_slot_back():
    slots = S.ComputeSlots(1)
    with pytest.raises(S.Cancelled):
        with slots.hold():
            raise S.Cancelled("the client left")
    t = time.perf_counter()
    with slots.hold():
        pass
    assert time.perf_counter() - t < 0.05


def test_idle_slots_run_on_idle_once_after_the_last_release():
    calls: list[float] = []
    slots = S.ComputeSlots(1, on_idle=lambda: calls.append(time.perf_counter()), idle_s=0.2)
    for _ in range(3):  # back-to-back runs: only the last release's timer fires
        with slots.hold():
            pass
    with slots.hold():
        time.sleep(0.3)  # busy past an earlier timer: it does nothing
    time.sleep(0.5)
    assert len(calls) == 1


def test_trim_heap_gives_memory_back_on_glibc():
    from cm_core.accel.cpu_malloc import trim_heap
    assert isinstance(trim_heap(), bool)


# ----------------------------------------------------------------------------- in the running app
gradio_client = pytest.importorskip("gradio_client")
psutil = pytest.importorskip("psutil")
from app_server import server_fixture  # noqa: E402

server = server_fixture()
LONG = (EDM, 1, "", 0, 16, 0.0, "random", 200)  # Heun, 200 steps = 399 evaluations of 16 images


def _cpu_per_second(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - before) / seconds


def _started(job, server, timeout: float = 30.0) -> None:
    """Wait until ``job`` computes (the server burns CPU)."""
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if _cpu_per_second(server.proc.pid, 0.5) > 0.5:
            return
    raise AssertionError(f"the job did not start: {job.status()}")


def _next_request_is_prompt(client) -> float:
    t = time.perf_counter()
    gallery, _ = client.predict(MODEL, 2, "", 0, 1, 0.0, "random", 18, api_name="/generate_steps")
    assert len(gallery) == 1
    return time.perf_counter() - t


def test_a_cancelled_heun_job_stops_and_the_next_request_starts_at_once(server):
    from gradio_client import Client
    client = Client(server.url, verbose=False)
    _next_request_is_prompt(client)  # warm: the model loaded, the first-call costs paid
    job = client.submit(*LONG, api_name="/generate_steps")
    _started(job, server)
    job.cancel()
    latency = _next_request_is_prompt(client)
    idle = _cpu_per_second(server.proc.pid, 2.0)
    print(f"\nafter cancel: next request {latency:.2f} s, server CPU {idle:.2f} s/s")
    assert latency < 3.0 and idle < 0.3


CHILD = """
import sys, time
from gradio_client import Client
from gradio_client.utils import Status
c = Client(sys.argv[1], verbose=False)
j = c.submit(*{long!r}, api_name="/generate_steps")
t = time.time()
while j.status().code not in (Status.PROGRESS, Status.ITERATING, Status.FINISHED) and time.time() - t < 60:
    time.sleep(0.1)
print("computing" if j.status().code in (Status.PROGRESS, Status.ITERATING) else j.status().code, flush=True)
time.sleep(120)
"""


def test_a_client_that_disconnects_stops_its_job(server):
    """The child is killed only once its job reports progress over its event stream: before the
    stream opens, the server has no connection whose loss it could notice."""
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(long=LONG), server.url],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "computing"
        _started(None, server)
    finally:
        child.kill()
        child.wait()
    from gradio_client import Client
    latency = _next_request_is_prompt(Client(server.url, verbose=False))
    idle = _cpu_per_second(server.proc.pid, 2.0)
    print(f"\nafter disconnect: next request {latency:.2f} s, server CPU {idle:.2f} s/s")
    assert latency < 5.0 and idle < 0.3
