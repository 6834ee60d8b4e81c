"""The planner: it times candidate variants (here fake ones with injected timings), keeps the
fastest that passes the quality check, falls back when one raises, persists its choice in a cache
keyed by machine, software, network and bucket, and plans in the background without blocking."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import torch

from cm_core.accel.plan_cache import BackgroundPlanner, PlanCache, network_hash, plan_key
from cm_core.accel.planner import (
    Activity,
    Candidate,
    Deadline,
    Plan,
    Trial,
    choose,
    interleaved_times,
    make_plan,
    out_of_the_race,
    plan_mode,
    timed_quietly,
)

X = (torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4), torch.ones(2), None)


def _step(offset: float):
    return lambda: (lambda x, sigma, labels: x * 0.5 + offset)


def _boom(msg: str):
    def build():
        raise RuntimeError(msg)
    return build


def _timer(ms: dict[str, float]):
    """An injected timer: the given ms per call (per image: divided by the batch of 2 later)."""
    seen = []

    def timer(runs):
        seen.append(sorted(runs))
        return {name: ms[name] / 1000 for name in runs}
    timer.seen = seen
    return timer


def test_the_faster_passing_candidate_is_chosen():
    cands = [Candidate("exact", _step(0.0), exact=True), Candidate("bf16", _step(1e-3)),
             Candidate("fp32-cl", _step(1e-6))]
    plan = make_plan(cands, X, timer=_timer({"exact": 100, "bf16": 40, "fp32-cl": 90}))
    assert plan.chosen == "bf16" and plan.bucket == 2 and "60% faster" in plan.why
    times = {t.name: t.ms_per_img for t in plan.trials}
    assert times == {"exact": 50.0, "bf16": 20.0, "fp32-cl": 45.0}
    assert all(t.ok for t in plan.trials) and "CHOSEN" in plan.table()


def test_a_fast_candidate_that_fails_the_check_never_wins():
    timer = _timer({"exact": 100, "wrong": 10, "fp32-cl": 80})
    plan = make_plan([Candidate("exact", _step(0.0), exact=True), Candidate("wrong", _step(0.2)),
                      Candidate("fp32-cl", _step(0.0))], X, timer=timer)
    assert plan.chosen == "fp32-cl"
    wrong = next(t for t in plan.trials if t.name == "wrong")
    assert not wrong.ok and wrong.ms_per_img is None and wrong.max_abs == pytest.approx(0.2)
    assert timer.seen == [["exact", "fp32-cl"]]  # the failing one is not even timed


def test_a_candidate_that_raises_loses_and_the_rest_still_plan():
    cands = [Candidate("exact", _step(0.0), exact=True),
             Candidate("compiled", _boom("inductor: compile error")),
             Candidate("graphed", _boom("capture failed")), Candidate("fp32-cl", _step(0.0))]
    plan = make_plan(cands, X, timer=_timer({"exact": 100, "fp32-cl": 99}))
    assert plan.chosen == "exact" and "not over 3%" in plan.why  # 1% is within the noise
    errors = {t.name: t.error for t in plan.trials if t.error}
    assert errors == {"compiled": "RuntimeError: inductor: compile error",
                      "graphed": "RuntimeError: capture failed"}
    assert "capture failed" in plan.table()


def test_a_candidate_far_slower_on_its_first_run_is_not_timed():
    def slow():
        def step(x, sigma, labels):
            time.sleep(0.05)
            return x * 0.5
        return step
    timer = _timer({"exact": 100})
    plan = make_plan([Candidate("exact", _step(0.0), exact=True), Candidate("emulated bf16", slow)], X,
                     timer=timer)
    trial = next(t for t in plan.trials if t.name == "emulated bf16")
    assert plan.chosen == "exact" and timer.seen == []  # the exact path alone: nothing to race
    assert trial.ms_per_img is None and trial.error.startswith("not timed: it ran") and trial.slower > 1.5
    # at a larger batch, one found that slow is not even run
    again = make_plan([Candidate("exact", _step(0.0), exact=True), Candidate("emulated bf16", _boom("ran"))],
                      X, timer=_timer({"exact": 100}), skip={"emulated bf16": trial.slower})
    skipped = next(t for t in again.trials if t.name == "emulated bf16")
    assert skipped.error.startswith("not run:") and skipped.slower == trial.slower


def _sleeper(secs: float, offset: float = 0.0):
    def build():
        def step(x, sigma, labels):
            time.sleep(secs)
            return x * 0.5 + offset
        return step
    return build


def test_first_runs_that_settle_the_race_are_not_timed_again():
    firsts = {"exact": [0.50], "fp32-cl": [0.45], "bf16": [0.25], "compiled": []}
    assert out_of_the_race(firsts) == {"exact", "fp32-cl"}  # over 1.5 x 0.25 + 0.01 s
    assert out_of_the_race({"exact": [0.011], "bf16": [0.001]}) == set()  # within timer noise
    # the exact path and a near-exact copy at 2x the bf16 one's time: bf16 wins without rounds
    timer = _timer({})
    plan = make_plan([Candidate("exact", _sleeper(0.08), exact=True), Candidate("fp32-cl", _sleeper(0.07)),
                      Candidate("bf16", _sleeper(0.03, 1e-3))], X, timer=timer)
    times = {t.name: t.ms_per_img for t in plan.trials}
    assert plan.chosen == "bf16" and timer.seen == [] and "decided on first runs" in plan.why
    assert times["exact"] == pytest.approx(40, abs=15) and times["bf16"] == pytest.approx(15, abs=10)
    # close first runs race in rounds
    timer = _timer({"exact": 100, "fp32-cl": 90})
    plan = make_plan([Candidate("exact", _sleeper(0.03), exact=True), Candidate("fp32-cl", _sleeper(0.03))],
                     X, timer=timer)
    assert timer.seen == [["exact", "fp32-cl"]] and plan.chosen == "fp32-cl"


class _Layers(torch.nn.Module):
    """A network of ``n`` layers that each take ``secs``."""

    def __init__(self, n: int, secs: float) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Identity() for _ in range(n))
        self.secs = secs

    def forward(self, x):
        for layer in self.layers:
            time.sleep(self.secs)
            x = layer(x)
        return x


def test_a_slow_candidate_is_stopped_at_its_time_limit_not_run_to_the_end():
    limit = Deadline()
    exact_net, slow_net = _Layers(4, 0.01), limit.watch(_Layers(40, 0.01))  # 40 ms; 400 ms
    cands = [Candidate("exact", lambda: (lambda x, s, l: exact_net(x * 0.5)), exact=True),
             Candidate("emulated bf16", lambda: (lambda x, s, l: slow_net(x * 0.5)))]
    t0 = time.perf_counter()
    plan = make_plan(cands, X, timer=_timer({"exact": 100}), limit=limit)
    assert time.perf_counter() - t0 < 0.3  # the exact run (40 ms) and the slow one stopped near 60 ms
    trial = next(t for t in plan.trials if t.name == "emulated bf16")
    assert plan.chosen == "exact" and trial.error.startswith("stopped after") and 1.5 <= trial.slower < 4
    limit.check()  # outside a run, the hooks never stop anything
    assert slow_net(torch.ones(1)).item() == 1.0


def test_the_first_runs_count_as_timing_samples():
    clock = iter(range(100))
    med = interleaved_times({"a": lambda: None}, rounds=1, warmup=0, clock=lambda: float(next(clock)),
                              prior={"a": [5.0, 7.0]})
    assert med == {"a": 5.0}  # median of 5, 7 and the round's 1 s


def test_a_run_disturbed_by_a_serving_call_is_timed_again_and_planning_waits_for_serving():
    activity, calls = Activity(max_wait_s=2.0), []

    def run():
        calls.append(1)
        if len(calls) == 1:
            with activity:  # a request served during the first timed run
                pass
    clock = iter([0.0, 5.0, 10.0, 11.0])
    assert timed_quietly(run, activity, clock=lambda: next(clock)) == 1.0 and len(calls) == 2
    release = threading.Event()

    def serve():
        with activity:
            release.wait(2)
    server = threading.Thread(target=serve)
    server.start()
    time.sleep(0.05)
    threading.Timer(0.2, release.set).start()
    t0 = time.monotonic()
    mark = activity.quiet_mark()  # the planner waits; serving never does
    assert time.monotonic() - t0 >= 0.1 and activity.undisturbed(mark)
    server.join()


def test_the_exact_path_wins_ties_and_a_plan_needs_one():
    trials = [Trial("exact", 10.0, 0, float("inf"), True), Trial("cl", 9.8, 1e-6, 90.0, True)]
    assert choose(trials, "exact")[0] == "exact"
    assert choose(trials, "exact", margin=0.01)[0] == "cl"
    with pytest.raises(ValueError, match="exactly one exact candidate"):
        make_plan([Candidate("a", _step(0.0))], X)
    plan = make_plan([Candidate("exact", _boom("no memory"), exact=True)], X)
    assert plan.chosen == "exact" and "raised" in plan.why


def test_interleaved_rounds_rotate_and_take_medians():
    clock_t, order = [0.0], []
    cost = {"a": [1.0, 9.0, 1.0, 1.0, 1.0], "b": [2.0] * 5}  # one slow outlier round for a

    def make(name):
        def run():
            order.append(name)
            clock_t[0] += cost[name][sum(o == name for o in order[2:]) - 1] if len(order) > 2 else 0.0
        return run
    med = interleaved_times({"a": make("a"), "b": make("b")}, rounds=5, warmup=1, clock=lambda: clock_t[0])
    assert med == {"a": 1.0, "b": 2.0}
    assert order[2:6] == ["a", "b", "b", "a"]  # warm-up, then the order rotates each round


def test_plan_mode_reads_cm_plan_and_names_the_choices(monkeypatch):
    monkeypatch.delenv("CM_PLAN", raising=False)
    assert plan_mode() == "measure"
    monkeypatch.setenv("CM_PLAN", "Cached")
    assert plan_mode() == "cached" and plan_mode("off") == "off"
    with pytest.raises(ValueError, match="measure, cached, off"):
        plan_mode("fastest")


def _plan(name: str = "bf16", bucket: int = 1) -> Plan:
    return Plan(name, "why", bucket, (Trial(name, 1.5, 1e-3, 55.0, True), Trial("exact", 3.0, 0.0, float("inf"), True)))


def test_the_cache_is_reused_across_instances_and_written_atomically(tmp_path):
    path = tmp_path / "plans.json"
    PlanCache(path).put("k1", _plan())
    PlanCache(path).put("k2", _plan("exact", 8))
    again = PlanCache(path)
    assert again.get("k1") == _plan() and again.get("k2").chosen == "exact" and again.get("k3") is None
    assert sorted(json.loads(path.read_text())["plans"]) == ["k1", "k2"]
    assert [p.name for p in tmp_path.iterdir()] == ["plans.json"]  # no temporary file left


def test_the_key_changes_with_bucket_threads_and_architecture(monkeypatch):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 3, 3))
    same = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 3, 3))  # other weights
    wider = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 3, 3))
    cpu = torch.device("cpu")
    k = plan_key(net, cpu, 1)
    assert k == plan_key(same, cpu, 1) and network_hash(net) == network_hash(same)
    assert len({k, plan_key(net, cpu, 8), plan_key(wider, cpu, 1)}) == 3
    a, b = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(3, 8, 3)  # diffusers' private config keys vary
    a.config = {"channels": 8, "_use_default_values": ["act_fn", "norm_eps"]}
    b.config = {"channels": 8, "_use_default_values": ["norm_eps", "act_fn"]}
    assert network_hash(a) == network_hash(b)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert plan_key(net, cpu, 1) != k
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "plans": {}}', "[1, 2]",
                                     '{"version": 1, "plans": {"k1": {"chosen": "x"}}}'])
def test_a_corrupt_or_foreign_cache_is_ignored_with_a_log_line_and_rebuilt(tmp_path, caplog, content):
    path = tmp_path / "plans.json"
    path.write_text(content)
    cache = PlanCache(path)
    with caplog.at_level(logging.WARNING, logger="cm_core.accel.planner"):
        assert cache.get("k1") is None
    assert str(path) in caplog.text
    cache.put("k1", _plan())
    assert PlanCache(path).get("k1") == _plan()


def test_planning_runs_in_the_background_and_never_blocks_serving(tmp_path):
    release, calls = threading.Event(), []

    def slow_plan(bucket: int) -> Plan:
        calls.append(bucket)
        release.wait(10)
        return _plan(bucket=bucket)
    cache = PlanCache(tmp_path / "plans.json")
    bp = BackgroundPlanner(slow_plan, key=lambda b: f"key{b}", cache=cache)
    t = time.perf_counter()
    assert bp.chosen(1) is None and bp.chosen(1) is None and bp.chosen(8) is None
    assert time.perf_counter() - t < 0.5  # answered at once while the plan runs
    release.set()
    assert bp.wait(10)
    assert bp.chosen(1) == "bf16" and bp.chosen(8) == "bf16" and calls == [1, 8]
    # a restart reads the cache and measures nothing; "cached" never measures; "off" plans nothing
    for mode, expect in (("measure", "bf16"), ("cached", "bf16")):
        again = BackgroundPlanner(lambda b: pytest.fail("measured again"), lambda b: f"key{b}", cache, mode)
        again.chosen(8)
        assert again.wait(5) and again.chosen(8) == expect
    cold = BackgroundPlanner(lambda b: pytest.fail("measured"), lambda b: "other", cache, "cached")
    cold.chosen(1)
    assert cold.wait(5) and cold.chosen(1) is None
    off = BackgroundPlanner(lambda b: pytest.fail("measured"), lambda b: "key1", cache, "off")
    assert off.chosen(1) is None and off.wait(1)


def test_a_plan_that_raises_leaves_the_default_serving(caplog):
    def broken(bucket: int) -> Plan:
        raise RuntimeError("out of memory while timing")
    bp = BackgroundPlanner(broken, key=lambda b: "k")
    with caplog.at_level(logging.WARNING, logger="cm_core.accel.planner"):
        assert bp.chosen(4) is None
        assert bp.wait(5)
    assert bp.chosen(4) is None and "out of memory" in bp.errors[4] and "default path serves" in caplog.text


# ----------------------------------------------------------------------------- on a real network
def _steady_first_runs(monkeypatch) -> None:
    """Every candidate's first (screening) run counts as 10 ms and runs to its end: on a busy
    machine a real first run of a tiny network can pass 1.5x the exact one's time, and the
    candidate would be stopped or dropped before the fake timer sees it."""
    from cm_core.accel import planner

    def steady(fn, activity, clock=None):
        fn()
        return 0.01
    monkeypatch.setattr(planner, "timed_quietly", steady)
    monkeypatch.setattr(planner.Deadline, "check", lambda self: None)


def test_the_embedded_model_s_candidates_are_checked_and_the_choice_follows_the_timer(monkeypatch):
    from cm_core.accel import planner
    from cm_core.accel.candidates import candidates, plan_denoiser
    from cm_core.models.checkpoints import load_denoiser
    den = load_denoiser("cd_digits32", device="cpu")
    names = [c.name for c in candidates(den)]
    assert names[0] == "fp32 exact" and {"fp32 channels_last eager", "bf16 channels_last eager"} <= set(names)
    fake = {"fp32 exact": 0.010, "fp32 channels_last eager": 0.008, "bf16 channels_last eager": 0.002}
    monkeypatch.setattr(planner, "interleaved_times", lambda runs, **kw: {n: fake[n] for n in runs})
    _steady_first_runs(monkeypatch)  # run bf16 to the end, even if slow here
    plan = plan_denoiser(den, 2)
    by = {t.name: t for t in plan.trials}
    assert by["fp32 exact"].max_abs == 0 and by["fp32 channels_last eager"].max_abs < 1e-4
    assert by["bf16 channels_last eager"].max_abs > 1e-3  # bf16 rounding, within or beyond the bound
    expect = "bf16 channels_last eager" if by["bf16 channels_last eager"].ok else "fp32 channels_last eager"
    assert plan.chosen == expect and by["fp32 exact"].ms_per_img == pytest.approx(5.0)


def test_cli_plan_prints_every_candidate_and_stores_the_plan(monkeypatch, tmp_path):
    from run_cli import run_cli

    from cm_core.accel import planner
    monkeypatch.setenv("CM_PLAN_CACHE", str(tmp_path / "plans.json"))
    monkeypatch.setattr(planner, "interleaved_times", lambda runs, **kw: {n: 0.01 for n in runs})
    _steady_first_runs(monkeypatch)
    res = run_cli("models", "--plan", "cd_digits32", "--batch-sizes", "1")
    assert res.returncode == 0, res.stderr
    assert "fp32 exact" in res.stdout and "fp32 channels_last eager" in res.stdout
    assert "chosen: fp32 exact (the fastest passing candidate" in res.stdout  # equal times: exact wins
    assert len(json.loads((tmp_path / "plans.json").read_text())["plans"]) == 1
    bad = run_cli("models", "--plan", "cd_digits32", "--batch-sizes", "0")
    assert bad.returncode != 0 and "batch sizes >= 1" in bad.stderr


# ----------------------------------------------------------------------------- inside optimize
@pytest.fixture()
def planned_env(monkeypatch, tmp_path):
    """CM_PLAN=measure with a scratch plan cache; the embedded model on the CPU."""
    from cm_core.models.checkpoints import load_denoiser
    monkeypatch.setenv("CM_PLAN", "measure")
    monkeypatch.setenv("CM_PLAN_CACHE", str(tmp_path / "plans.json"))
    return load_denoiser("cd_digits32", device="cpu")


def _fake_times(monkeypatch, fastest: str) -> None:
    from cm_core.accel import planner
    _steady_first_runs(monkeypatch)
    monkeypatch.setattr(planner, "interleaved_times",
                        lambda runs, **kw: {n: 0.001 if n == fastest else 0.01 for n in runs})


@pytest.mark.parametrize("fastest", ["fp32 exact", "fp32 channels_last eager"])
def test_optimize_serves_the_fixed_plan_until_the_planner_has_chosen(planned_env, monkeypatch, fastest):
    from cm_core import optimize
    _fake_times(monkeypatch, fastest)
    den = planned_env
    fast = optimize(den, copy=True)
    x, sig, lab = torch.randn(3, 3, 32, 32) * 2, torch.full((3,), 2.0), torch.tensor([1, 2, 3])
    fast(x, sig, lab)  # the first request of bucket 4 queues its plan
    assert fast.planned.planner.wait(60)
    out = fast(x, sig, lab)
    assert fast.stats["planned_calls"] == 1 and fast.describe_path(3).startswith(f"planned {fastest}")
    with torch.no_grad():
        ref = den(x, sig, lab)
    assert (out - ref).abs().max() <= (0 if fastest == "fp32 exact" else 1e-4)
    # the chosen step already existed (the exact path, or the fixed plan's variant): no new copy
    assert fast.planned._steps[fastest] in (fast._exact_step, fast._step_impl)


def test_serving_never_waits_for_planning_and_a_restart_reuses_the_plan(planned_env, monkeypatch):
    from cm_core import optimize
    from cm_core.accel import planned
    release = threading.Event()
    real = planned.plan_denoiser

    def slow(*a, **kw):
        release.wait(30)
        return real(*a, **kw)
    monkeypatch.setattr(planned, "plan_denoiser", slow)
    _fake_times(monkeypatch, "fp32 exact")
    fast = optimize(planned_env, copy=True)
    t = time.perf_counter()
    for _ in range(3):
        fast(torch.randn(1, 3, 32, 32), 80.0, torch.tensor([0]))
    assert time.perf_counter() - t < 5 and fast.stats["planned_calls"] == 0  # served meanwhile
    release.set()
    assert fast.planned.planner.wait(60) and fast.planned(1) is not None
    monkeypatch.setattr(planned, "plan_denoiser", lambda *a, **kw: pytest.fail("measured again"))
    again = optimize(planned_env, copy=True)
    again(torch.randn(1, 3, 32, 32), 80.0, torch.tensor([0]))
    assert again.planned.planner.wait(10) and again.describe_path(1).startswith("planned fp32 exact")


def test_every_serving_call_is_counted_for_the_planner(planned_env, monkeypatch):
    from cm_core import optimize
    _fake_times(monkeypatch, "fp32 exact")
    fast = optimize(planned_env, copy=True)
    assert fast.planned.activity is fast.serving
    fast(torch.zeros(2, 3, 32, 32), 80.0, torch.tensor([1, 2]))
    assert fast.serving.started == 1 and fast.serving.active == 0
    assert fast.planned.planner.wait(60)  # (no planner thread left running at exit)


def test_cm_plan_off_keeps_the_fixed_plan(planned_env, monkeypatch):
    from cm_core import optimize
    monkeypatch.setenv("CM_PLAN", "off")
    assert optimize(planned_env, copy=True).planned is None
    monkeypatch.setenv("CM_PLAN", "measure")
    assert optimize(planned_env, copy=True, dtype="bf16").planned is None  # an explicit choice is kept


def test_a_graphed_candidate_captures_once_per_shape_and_a_failed_capture_loses(monkeypatch):
    """The CUDA candidates' graph replay, on CPU with a stand-in of GraphedCall's semantics
    (static input buffers filled at each replay): one capture per input shape, the step's own
    numbers; a capture that fails makes the candidate lose, and the exact path is chosen."""
    from cm_core.accel import cuda_graphs
    from cm_core.accel.candidates import graphed
    captures = []

    class Stand:
        def __init__(self, fn, inputs, pool=None):
            self.fn, self.inputs = fn, [t.clone() if t is not None else None for t in inputs]
            captures.append(fn)

        def __call__(self, *inputs):
            for dst, src in zip(self.inputs, inputs):
                if dst is not None:
                    dst.copy_(src)
            return self.fn(*self.inputs).clone()
    monkeypatch.setattr(cuda_graphs, "GraphedCall", Stand)
    step = graphed(_step(1e-3))()
    for x in (X[0], X[0] * 2, torch.ones(1, 3, 4, 4)):
        assert torch.equal(step(x, X[1][: len(x)], None), x * 0.5 + 1e-3)
    assert len(captures) == 2  # shapes [2, 3, 4, 4] and [1, 3, 4, 4]

    def broken(*a, **k):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(cuda_graphs, "GraphedCall", broken)
    plan = make_plan([Candidate("exact", _step(0.0), exact=True),
                      Candidate("fp16 graphed", graphed(_step(0.0)), warm=True)], X, timer=_timer({"exact": 100}))
    lost = next(t for t in plan.trials if t.name == "fp16 graphed")
    assert plan.chosen == "exact" and not lost.ok and "not permitted" in lost.error
