"""Compilation for the fast path: persistent Inductor caches and background compilation.

:func:`configure_compile_cache` makes Inductor's FX-graph / autotune caches persistent and
:func:`_mega_cache` loads or saves Dynamo's portable cache artifacts, so a restart reloads instead of
recompiling. :class:`BackgroundCompiler` compiles batch buckets in a daemon thread while the eager
network serves requests (a :class:`cm_core.accel.fast.FastDenoiser` owns one when compiling).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .background import BucketQueue
from .cuda_graphs import compiling

log = logging.getLogger("cm_core.accel.fast")  # one logger for the whole fast path

StepFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Compiler = Callable[[StepFn], StepFn]


def configure_compile_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Make Inductor's caches persistent: ``$TORCHINDUCTOR_CACHE_DIR`` (kept if set), else
    ``cache_dir``, else ``~/.cache/cm-studio/inductor``; FX-graph and autotune caches on.

    Returns the directory. Compiled kernels and autotuning results are reused across processes,
    so only the first start on a machine pays the full compilation.
    """
    default = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "cm-studio" / "inductor"
    path = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default)))
    path.mkdir(parents=True, exist_ok=True)
    import torch._inductor.config as ic
    ic.fx_graph_cache = True
    if hasattr(ic, "autotune_local_cache"):
        ic.autotune_local_cache = True
    return path


def _mega_cache(path: Path, save: bool) -> None:
    """Load or save Dynamo's portable cache artifacts (torch >= 2.7); silently absent otherwise."""
    try:
        if save:
            art = torch.compiler.save_cache_artifacts()
            if art is not None:
                path.write_bytes(art[0])
        elif path.is_file():
            torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - cache is an optimisation only
        log.debug("mega-cache %s failed: %s", "save" if save else "load", e)


def default_compiler(mode: str) -> Compiler:
    """``torch.compile`` with static shapes (one graph per bucket) in ``mode``."""
    def comp(fn: StepFn) -> StepFn:
        return torch.compile(fn, mode=mode, dynamic=False, fullgraph=False)
    return comp


class BackgroundCompiler:
    """Compiles a step function for batch buckets in a background thread, smallest first, while
    its owner serves eagerly; a bucket switches to its compiled version once it ran once.

    ``compiled``: the compiled step (``torch.compile`` compiles each new shape on its first call);
    ``dummy(b)``: inputs of a batch of ``b`` for that first call; ``device``: synchronised after
    it; ``accept(b)``: a freshly compiled bucket's self-check (False keeps it eager);
    ``cache_file``: Dynamo's portable cache, saved after each bucket. A failed compilation (no
    compiler toolchain, out of memory) is kept in ``stats["compile_error"]`` and leaves every
    bucket eager; ``stats["compile_s"]`` has each bucket's seconds.
    """

    def __init__(self, compiled: StepFn, dummy: Callable[[int], tuple], device: torch.device,
                 accept: Callable[[int], bool] = lambda b: True, cache_file: Path | None = None) -> None:
        self.compiled, self.dummy, self.device = compiled, dummy, device
        self.accept, self.cache_file = accept, cache_file
        self.stats: dict = {"compile_s": {}, "compile_error": None}
        self._ready: set[int] = set()
        self.jobs = BucketQueue(self._compile_bucket, "cm-compile")

    def ready(self, bucket: int) -> bool:
        """Whether ``bucket`` is compiled and accepted."""
        return bucket in self._ready

    def request(self, bucket: int) -> None:
        """Queue ``bucket`` unless it is compiled, queued, or compilation has failed or stopped."""
        if bucket not in self._ready and not self.stats["compile_error"]:
            self.jobs.submit(bucket)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the queue to drain; True when it did."""
        return self.jobs.wait(timeout)

    def stop(self) -> None:
        """Drop the queued buckets and accept no more; a compilation under way finishes, then the
        worker thread ends (so nothing keeps the step, and its GPU memory, alive)."""
        self.jobs.stop()

    def _compile_bucket(self, b: int) -> None:
        """Trace, compile and run bucket ``b`` once on dummy inputs; on failure stay eager."""
        t0 = time.perf_counter()
        try:
            with compiling(), torch.no_grad():  # no CUDA graph capture meanwhile (autotune syncs)
                self.compiled(*self.dummy(b))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
        except Exception as e:  # noqa: BLE001 - no compiler toolchain, OOM, ...: stay eager
            self.stats["compile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            log.warning("compilation of batch bucket %d failed, staying eager: %s", b, e)
            self.jobs.clear()
            return
        self.stats["compile_s"][b] = time.perf_counter() - t0
        if not self.accept(b):
            log.warning("compiled batch bucket %d failed its self-check, its eager path stays", b)
            return
        self._ready.add(b)
        if self.cache_file is not None:
            _mega_cache(self.cache_file, save=True)
