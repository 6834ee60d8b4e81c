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
from cm_core.accel.planner import Candidate, Plan, Trial, choose, interleaved_medians, make_plan, plan_mode

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
    med = interleaved_medians({"a": make("a"), "b": make("b")}, rounds=5, warmup=1, clock=lambda: clock_t[0])
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
