"""What every model-running event does before its handler, on each kind of machine.

:func:`model_event` wraps a handler so that, in the app's main process,

1. the chosen model is fetched on first use where that is allowed (a Space, ``CM_AUTO_FETCH=1``),
   with the download shown on the event's progress bar (:func:`cm_core.service.ensure_model`);
2. on ZeroGPU it is loaded into the model cache there too (weights moved to the emulated
   ``cuda``, as the Hub docs ask), so the GPU worker finds it and spends no GPU time on I/O;
3. the handler runs in one of the compute slots (:mod:`cm_core.service.slots`), taken after the
   download, on ZeroGPU inside ``spaces.GPU(duration=...)`` with the duration estimated from its
   batch size and steps (:func:`cm_core.service.estimate_seconds`). Its progress callback stops
   the work when the client leaves (:mod:`cm_app.clients`).

Elsewhere step 2 is skipped, step 3 calls the handler directly, and ``spaces`` is not imported.
The wrapper keeps the handler's signature (``functools.wraps``), which Gradio reads for its API
parameters and for the ``gr.Progress`` argument.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr

from cm_core import service as S

from .events import progress_of, shows_errors

#: the model that actually runs, when it is not the chosen one
RUNS: dict[str, Callable[[str], str]] = {"compare_teacher": S.teacher_for}


def _on_gpu(fn: Callable, api_name: str) -> Callable:
    """``fn`` under ``spaces.GPU`` with a per-call duration on ZeroGPU, else ``fn`` itself."""
    if not S.zero_gpu_active():
        return fn
    import spaces
    sig = inspect.signature(fn)
    runs = RUNS.get(api_name)

    def duration(*args: Any, **kwargs: Any) -> int:
        return S.estimate_seconds(dict(sig.bind_partial(*args, **kwargs).arguments), runs)
    return spaces.GPU(duration=duration)(fn)


def _progress_arg(args: tuple, kwargs: dict) -> Callable[[float, str], None] | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, gr.Progress):
            return progress_of(a)
    return None


def _prepare(models: list[str], progress: Callable[[float, str], None] | None, batched: bool) -> None:
    """Fetch (where allowed) and, on ZeroGPU, load each model before the GPU is attached. A batch
    does not wait for a download (it would hold up the requests merged into it): the download
    starts, and the handler reports it in the rows of that model (:func:`cm_core.service.check_download`)."""
    for name in dict.fromkeys(models):
        try:
            if batched:
                S.start_download(name)
            else:
                S.ensure_model(name, progress)
            if S.zero_gpu_active():  # a batch's model not on disk yet: its error is ignored below
                S.cache().get(name)
        except S.USER_ERRORS:
            if not batched:
                raise
            # a batch fails per request: the handler reports this model's error in its row


def model_event(fn: Callable, api_name: str, batched: bool = False) -> Callable:
    """``fn`` with the fetch-on-first-use and ZeroGPU steps above (user errors shown as messages);
    a generator ``fn`` (streamed outputs) stays one, holding its compute slot while it runs."""
    on_gpu = _on_gpu(fn, api_name)
    runs = RUNS.get(api_name, lambda m: m)

    def prepare(args: tuple, kwargs: dict) -> Callable[[float, str], None] | None:
        chosen = args[0] if args else kwargs.get("model")
        models = list(chosen) if batched else [chosen]
        try:
            targets = [runs(str(m)) for m in models]
        except S.USER_ERRORS:
            targets = []  # an unknown model: the handler says which names are valid
        progress = _progress_arg(args, kwargs)
        _prepare(targets, progress, batched)
        return progress

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Any:
            progress = prepare(args, kwargs)
            with S.compute_slots().hold(progress):
                return (yield from on_gpu(*args, **kwargs))
        return shows_errors(stream)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        progress = prepare(args, kwargs)
        with S.compute_slots().hold(progress):  # after the download: it holds no slot
            return on_gpu(*args, **kwargs)
    return shows_errors(run)
