"""The fast path (cm_core.accel.fast) on CPU: equal to the exact path, padding-invariant, and safe
when background compilation is slow or fails. Compile-heavy checks are marked slow."""
import gc
import threading
import weakref

import pytest
import torch

from cm_core import sampling
from cm_core.accel import cuda_graphs
from cm_core.accel import fast as fast_mod
from cm_core.accel.fast import FastDenoiser, bucket_for, pick_dtype
from cm_core.accel.entry import optimize
from cm_core.sampling.runner import ProgressOnly
from cm_core.models.denoiser import Denoiser
from cm_core.models.network import build_unet
from cm_core.models.registry import get_spec
from cm_core.sampling.generate import SampleSettings, labels_for, sample_batch

SPEC = get_spec("cd_digits32")


@pytest.fixture(autouse=True)
def exact_cpu_plan(monkeypatch):
    """These tests cover the machinery (padding, compilation, graphs) on the exact CPU plan (fp32,
    contiguous: a CPU without native bf16, and the small net not put in channels_last), so that
    they can compare to the bit; tests/test_cpu_fast.py covers the CPU plans themselves."""
    from cm_core.accel import cpu
    from cm_core.accel import entry as optimize_mod
    monkeypatch.setattr(fast_mod, "native_bf16", lambda: False)
    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    monkeypatch.setattr(optimize_mod, "cpu_plan", lambda net: cpu.CpuPlan(torch.float32, False, False))


@pytest.fixture(scope="module")
def den() -> Denoiser:
    torch.manual_seed(0)
    net = build_unet(SPEC.arch)
    return Denoiser(net, "cm", num_classes=10, image_size=32, name="tiny")


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g) * 80, torch.tensor([0, 4, 9])


@pytest.fixture(scope="module")
def ref(den, inputs) -> torch.Tensor:
    with torch.no_grad():
        return sampling.onestep(den, *inputs)


def test_dtype_and_buckets():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 3, 4, 5, 9, 17)] == [1, 4, 4, 8, 16, 24]


def test_cpu_default_is_exact(den, inputs, ref):
    """The exact CPU plan gives the Denoiser's numbers to the bit; the small net's own plan
    (fp32 + channels_last) is within 1e-5."""
    from cm_core.accel import cpu
    fast = optimize(den, copy=True)
    assert fast.dtype == torch.float32 and not fast.pad and fast.compiled_step is None and fast.exact is None
    assert (sampling.onestep(fast, *inputs) - ref).abs().max().item() == 0.0
    assert cpu.cpu_plan(den) == cpu.CpuPlan(torch.float32, False, True)
    cl = optimize(den, copy=True, channels_last=True)
    err = (sampling.onestep(cl, *inputs) - ref).abs().max().item()
    print(f"fp32 channels_last vs exact max abs: {err:.2e}")
    assert 0 < err < 1e-5 and cl.exact is not None


@pytest.mark.parametrize("dtype,bound", [("fp16", 1e-2), ("bf16", 5e-2)])
def test_half_precision_error(den, inputs, ref, dtype, bound):
    """fp16 (the CUDA default) stays within 1e-2; bf16 is reported (~2e-2 on this random net).
    In channels_last, where CPUs have half-precision kernels (the contiguous fp16 convolution
    is a slow fallback: 9 s against 1 s for the first call's 16-image self-check on Zen 3)."""
    fast = optimize(den, dtype=dtype, copy=True, channels_last=True)
    err = (sampling.onestep(fast, *inputs) - ref).abs().max().item()
    print(f"{dtype} fast vs fp32 exact max abs: {err:.2e}")
    assert err < bound


def test_half_precision_denoiser_keeps_the_time_input_fp32():
    """The plain Denoiser in fp16 (CM_DTYPE=float16, or the fast path's dropout route) passes
    250 log sigma in float32: rounded to fp16 (1095.5 -> 1096) it cost 5.8e-2 on the trained
    embedded model at sigma 80; now ~3e-3."""
    import copy

    from cm_core.models.checkpoints import load_denoiser
    exact = load_denoiser("cd_digits32")
    half = copy.deepcopy(exact).half()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 80
    lab = torch.tensor([1, 2, 3, 4])
    err = (sampling.onestep(half, x.half(), lab).float() - sampling.onestep(exact, x, lab)).abs().max().item()
    print(f"fp16 Denoiser vs fp32 one-step max abs: {err:.2e}")
    assert err < 1e-2


def test_fast_sample_batch_equals_exact(den):
    """generate.sample_batch on the fast denoiser equals the exact samplers (one and two steps)."""
    fast = optimize(den, copy=True)
    seeds, st = [5, 6], SampleSettings(num_evals=2)
    lab = labels_for(SPEC, seeds, None)
    exact = sample_batch(den, SPEC, seeds, st, lab)
    assert torch.equal(sample_batch(fast, SPEC, seeds, st, lab), exact)  # the same loop, to the bit
    one = SampleSettings(num_evals=1)
    assert torch.equal(sample_batch(fast, SPEC, seeds, one, lab), sample_batch(den, SPEC, seeds, one, lab))


def test_padding_gives_same_per_image_results(den, inputs, ref):
    fast = optimize(den, copy=True, compiler=lambda fn: fn, warm_buckets=())
    assert fast.pad and fast._bucket(3) == 4
    out = sampling.onestep(fast, *inputs)
    assert (out - ref).abs().max().item() < 1e-5


def test_failed_compile_falls_back_to_eager(den, inputs, ref):
    def broken(fn):
        def compiled(*a):
            raise RuntimeError("no compiler toolchain")
        return compiled
    fast = optimize(den, copy=True, compiler=broken, warm_buckets=(4,))
    assert fast.wait(timeout=30)
    assert "no compiler toolchain" in fast.stats["compile_error"] and not fast.ready(4)
    assert (sampling.onestep(fast, *inputs) - ref).abs().max().item() < 1e-5


def test_eager_serves_while_compiling(den, inputs, ref):
    gate = threading.Event()

    def slow(fn):
        def compiled(*a):
            gate.wait(30)  # "compiling" until the test lets it finish
            return fn(*a)
        return compiled
    fast = optimize(den, copy=True, compiler=slow, warm_buckets=(4,))
    out = sampling.onestep(fast, *inputs)  # bucket 4 not ready: eager
    assert fast.stats["eager_calls"] == 1 and fast.stats["compiled_calls"] == 0
    gate.set()
    assert fast.wait(timeout=30) and fast.ready(4)
    out2 = sampling.onestep(fast, *inputs)
    assert fast.stats["compiled_calls"] == 1
    assert torch.equal(out, out2) and (out - ref).abs().max().item() < 1e-5


def test_an_idle_or_closed_model_is_not_kept_alive(den):
    """The compile thread ends when its queue is empty or the model is closed (as the app's
    model cache does on eviction), so it does not keep an evicted model's memory alive."""
    hold = threading.Event()  # keeps each worker busy until its thread object is read
    fast = optimize(den, copy=True, compiler=lambda fn: lambda *a: (hold.wait(30), fn(*a))[1],
                    warm_buckets=(1,))
    worker = fast.compiler.jobs.worker
    hold.set()
    worker.join(30)
    assert not worker.is_alive() and fast.ready(1) and fast.compiler.jobs.worker is None
    hold.clear()
    fast.compiler.request(2)  # a new request starts a new worker
    worker = fast.compiler.jobs.worker
    hold.set()
    worker.join(30)
    assert fast.ready(2) and fast.compiler.jobs.worker is None

    gate = threading.Event()
    fast = optimize(den, copy=True, compiler=lambda fn: lambda *a: (gate.wait(30), fn(*a))[1],
                    warm_buckets=(1, 2))
    worker = fast.compiler.jobs.worker
    fast.close()  # bucket 1 may be compiling; bucket 2 is dropped
    gate.set()
    worker.join(30)
    assert not worker.is_alive() and not fast.ready(2)
    fast.compiler.request(4)
    assert fast.compiler.jobs.worker is None  # closed: nothing more is compiled
    ref = weakref.ref(fast)
    del fast
    gc.collect()
    assert ref() is None


def test_dropout_uses_exact_path(den):
    fast = optimize(den, copy=True)
    seeds, st = [1, 2], SampleSettings(num_evals=1, dropout=0.2)
    lab = labels_for(SPEC, seeds, None)
    a, b = sample_batch(fast, SPEC, seeds, st, lab), sample_batch(den, SPEC, seeds, st, lab)
    assert torch.equal(a, b) and den.dropout == 0.0
    assert not torch.equal(a, sample_batch(den, SPEC, seeds, SampleSettings(num_evals=1), lab))
    assert isinstance(fast, FastDenoiser)


class StaticGraph:
    """A CPU stand-in for GraphedCall with its semantics: inputs are copied into static buffers
    made at capture, and a replay runs the captured function (with its closure) on them."""
    captures: list = []

    def __init__(self, fn, inputs, pool=None):
        self.inputs = [t.clone() if t is not None else None for t in inputs]
        self.fn = fn
        StaticGraph.captures.append(fn)

    def __call__(self, *inputs):
        for dst, src in zip(self.inputs, inputs):
            if dst is not None:
                dst.copy_(src)
        return self.fn(*self.inputs).clone()


def test_graph_bookkeeping_with_stand_in_graphs(den, monkeypatch):
    """The CUDA-graph logic on CPU with a stand-in for GraphedCall: one capture per sampling
    loop, re-captured once the compiled step is ready, un-graphed from then on if capture fails."""
    captures = StaticGraph.captures = []
    monkeypatch.setattr(cuda_graphs, "GraphedCall", StaticGraph)
    gate = threading.Event()

    def gated(fn):
        return lambda *a: (gate.wait(30), fn(*a))[1]
    fast = optimize(den, copy=True, compiler=gated, warm_buckets=())
    fast.graphs.enabled = True
    seeds, st = [5, 6, 7], SampleSettings(num_evals=2)
    lab = labels_for(SPEC, seeds, None)
    exact = sample_batch(den, SPEC, seeds, st, lab)
    for _ in range(2):  # eager graph: captured once, replayed twice
        assert (sample_batch(fast, SPEC, seeds, st, lab) - exact).abs().max() < 1e-5
    assert len(captures) == 1 and fast.stats["graph_replays"] == 2
    gate.set()
    assert fast.wait(timeout=30) and fast.ready(4)
    assert (sample_batch(fast, SPEC, seeds, st, lab) - exact).abs().max() < 1e-5
    assert len(captures) == 2 and len(fast.graphs) == 1 and fast.graphs.keys()[0][-1] is True

    def broken(*a, **k):
        raise RuntimeError("capture invalidated")
    monkeypatch.setattr(cuda_graphs, "GraphedCall", broken)
    fast.graphs.clear()
    assert (sample_batch(fast, SPEC, seeds, st, lab) - exact).abs().max() < 1e-5
    assert "capture invalidated" in fast.stats["graph_error"]
    x = torch.randn(3, 3, 32, 32)
    out = fast.run_graphed("double", lambda t: fast(t, 80.0, lab) * 2, x)  # capture fails: plain call
    assert (out - 2 * den(x, 80.0, lab)).abs().max() < 1e-5


def test_no_capture_while_a_compilation_runs(den, monkeypatch):
    """Autotuning synchronises the device, which would invalidate a capture: while any bucket
    compiles, graphed loops run un-graphed (and uncached); the capture comes once it is done."""
    captures = StaticGraph.captures = []
    monkeypatch.setattr(cuda_graphs, "GraphedCall", StaticGraph)
    started, gate = threading.Event(), threading.Event()
    fast = optimize(den, copy=True, warm_buckets=(4,),
                    compiler=lambda fn: lambda *a: (started.set(), gate.wait(30), fn(*a))[2])
    fast.graphs.enabled = True
    assert started.wait(30)  # bucket 4 is compiling
    seeds, st = [5, 6, 7], SampleSettings(num_evals=2)
    lab = labels_for(SPEC, seeds, None)
    exact = sample_batch(den, SPEC, seeds, st, lab)
    for _ in range(2):
        assert (sample_batch(fast, SPEC, seeds, st, lab) - exact).abs().max() < 1e-5
    assert captures == [] and fast.stats["graph_deferred"] == 2 and fast.stats["graph_error"] is None
    locked = []  # the un-graphed fallback runs outside the capture lock (compiles can finish)
    fast.run_graphed("probe", lambda t: (locked.append(cuda_graphs._CAPTURE.locked()), t)[1], torch.ones(1))
    assert locked == [False] and fast.stats["graph_deferred"] == 3
    gate.set()
    assert fast.wait(timeout=30) and fast.ready(4)
    assert (sample_batch(fast, SPEC, seeds, st, lab) - exact).abs().max() < 1e-5
    assert len(captures) == 1 and fast.stats["graph_replays"] == 1


def test_out_of_memory_in_a_capture_is_raised_and_graphs_stay_on(den, monkeypatch):
    """An OOM during capture is the caller's to retry (the model cache evicts and retries);
    any other capture failure turns graphs off for good."""
    fail = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")]

    class Graph(StaticGraph):
        def __init__(self, fn, inputs, pool=None):
            if fail:
                raise fail.pop()
            super().__init__(fn, inputs, pool)
    monkeypatch.setattr(cuda_graphs, "GraphedCall", Graph)
    fast = optimize(den, copy=True)
    fast.graphs.enabled = True
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(torch.OutOfMemoryError):
        fast.run_graphed("double", lambda t: t * 2, x)
    assert fast.graphs_active and torch.equal(fast.run_graphed("double", lambda t: t * 2, x), x * 2)
    assert fast.stats["graph_replays"] == 1
    fail.append(RuntimeError("operation not permitted when stream is capturing"))
    assert torch.equal(fast.run_graphed("triple", lambda t: t * 3, x), x * 3)
    assert not fast.graphs_active and "not permitted" in fast.stats["graph_error"]


def test_sampling_runs_as_one_graph_for_new_seeds(den, monkeypatch):
    """One- and two-step sampling on a graph-capable fast denoiser: one capture per step count,
    and replays for new seeds (new noise, new labels) equal the exact samplers."""
    monkeypatch.setattr(cuda_graphs, "GraphedCall", StaticGraph)
    StaticGraph.captures = []
    fast = optimize(den, copy=True)
    fast.graphs.enabled = True
    progress = []

    def cb(d):
        progress.append((d["i"], d["n"], d["denoised"] is None))
    cb = ProgressOnly(cb)
    for seeds in ([1, 2, 3], [7, 8, 9]):
        lab = labels_for(SPEC, seeds, None)
        for steps in (1, 2):
            st = SampleSettings(num_evals=steps)
            got = sample_batch(fast, SPEC, seeds, st, lab, callback=cb)
            assert torch.equal(got, sample_batch(den, SPEC, seeds, st, lab)), steps
    assert len(StaticGraph.captures) == 2 and fast.stats["graph_replays"] == 4
    assert progress[:3] == [(0, 1, True), (0, 2, True), (1, 2, True)]


def test_heun_runs_as_one_graph(monkeypatch):
    """The EDM teachers' Heun loop on a graph-capable fast denoiser: one capture, and replays for
    new noise and labels equal the exact sampler."""
    monkeypatch.setattr(cuda_graphs, "GraphedCall", StaticGraph)
    StaticGraph.captures = []
    torch.manual_seed(0)
    teacher = Denoiser(build_unet(SPEC.arch), "edm", num_classes=10, image_size=32)
    fast = optimize(teacher, copy=True)
    fast.graphs.enabled = True
    progress = []

    def cb(d):
        progress.append(d["i"])
    cb = ProgressOnly(cb)
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        x, lab = torch.randn(2, 3, 32, 32, generator=g) * 80, torch.randint(10, (2,), generator=g)
        got = sampling.heun(fast, x, 3, lab, callback=cb)
        assert torch.equal(got, sampling.heun(teacher, x, 3, lab))
    assert len(StaticGraph.captures) == 1 and fast.stats["graph_replays"] == 2
    assert progress == [0, 1, 2] * 2


def test_graph_cache_is_bounded(den, monkeypatch):
    """Each batch shape / schedule is a graph; beyond max_graphs the least recently used goes."""
    monkeypatch.setattr(cuda_graphs, "GraphedCall", StaticGraph)
    StaticGraph.captures = []
    fast = optimize(den, copy=True)
    fast.graphs.enabled, fast.graphs.max_graphs = True, 2
    run = {n: (lambda n=n: sample_batch(fast, SPEC, list(range(n)), SampleSettings(num_evals=1),
                                        labels_for(SPEC, list(range(n)), None))) for n in (1, 2, 3)}
    for n in (1, 2, 1, 3):  # 3 evicts 2 (1 was used more recently)
        run[n]()
    assert len(StaticGraph.captures) == 3 and len(fast.graphs) == 2
    run[1]()
    assert len(StaticGraph.captures) == 3  # still cached
    run[2]()
    assert len(StaticGraph.captures) == 4 and len(fast.graphs) == 2


def test_editing_loops_run_as_one_graph(den, monkeypatch):
    """Colorize, inpaint, super-resolution and interpolation on a graph-capable fast denoiser:
    one capture per editor and schedule, replays equal to the exact editors for NEW images
    (the reference, mask and noise are graph inputs, not frozen into the capture)."""
    from cm_core import editing
    monkeypatch.setattr(cuda_graphs, "GraphedCall", StaticGraph)
    StaticGraph.captures = []
    fast = optimize(den, copy=True)
    fast.graphs.enabled = True
    lab, ts = torch.tensor([1, 7]), (0, 9, 17)

    def mask(im):  # a different mask for every image batch: keep where the red channel is > 0
        m = (im[:, :1] > 0).float()
        m[..., 0, 0], m[..., 0, 1] = 1.0, 0.0  # never all kept nor all generated
        return m
    edits = {"colorize": lambda d, im, g, cb: editing.colorize(d, im, im * 0 + 80, ts, 18, g, lab, callback=cb),
             "inpaint": lambda d, im, g, cb: editing.inpaint(d, im, mask(im), torch.full_like(im, 80.0), ts, 18, g, lab,
                                                             callback=cb),
             "super_resolve": lambda d, im, g, cb: editing.super_resolve(d, im, im * 0 + 80, ts, 18, g, 4, lab, callback=cb),
             "interpolate": lambda d, im, g, cb: editing.interpolate(d, im * 80, im.flip(0) * 80, [0.0, 0.5], ts, 18, g, lab)}
    progress = []

    def cb(d):
        progress.append((d["i"], d["n"], d["denoised"] is None))
    cb = ProgressOnly(cb)
    for seed in (3, 4):  # the second round replays the graphs captured by the first
        img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        for name, run in edits.items():
            gens = lambda: [torch.Generator().manual_seed(seed * 10 + j) for j in range(2)]  # noqa: E731
            exact = run(den, img, gens(), None)
            got = run(fast, img, gens(), cb)
            assert (got - exact).abs().max() < 1e-5, name
    assert len(StaticGraph.captures) == 4 and fast.stats["graph_replays"] == 8
    assert progress[:2] == [(0, 2, True), (1, 2, True)]


@pytest.mark.slow
def test_torch_compile_on_cpu(den, inputs, ref, tmp_path, monkeypatch):
    """Real Inductor compilation (minutes on 2 CPU cores): same numbers within 1e-4."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    fast = optimize(den, copy=True, compile=True, warm_buckets=(4,))
    assert fast.wait()
    assert fast.stats["compile_error"] is None and fast.ready(4), fast.stats
    err = (sampling.onestep(fast, *inputs) - ref).abs().max().item()
    print(f"compiled fp32 vs exact max abs: {err:.2e}; compile s: {fast.stats['compile_s']}")
    assert err < 1e-4 and fast.stats["compiled_calls"] == 1
