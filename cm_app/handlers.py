"""Event handlers: thin adapters from Gradio inputs to :mod:`cm_core.service` and back.

Each model-running handler is also a public API endpoint (its api_name is set in
:mod:`cm_app.layout`); the library's user errors become ``gr.Error`` messages
(:mod:`cm_app.events`). The model picker and the registry's endpoints are in :mod:`cm_app.picker`.
"""
from __future__ import annotations

import contextvars
import queue
import random
import threading
from collections.abc import Iterator

import gradio as gr

from cm_core import service as S
from cm_core.models.messages import bound
from cm_core.models.registry import get_spec

from . import editor_values
from .events import progress_of, shows_errors


def _streamed(run) -> Iterator[tuple[int, int, list]]:
    """Run ``run(preview)`` in a worker thread (with this event's context, so its progress bar
    and client checks work there); yield each ``(step, steps, images)`` the sampler previews as it
    comes, and return what ``run`` returns (its error is raised here)."""
    steps: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            steps.put(("done", run(lambda i, n, images: steps.put(("step", (i, n, images))))))
        except BaseException as e:  # noqa: BLE001 - handed to the generator, which raises it
            steps.put(("error", e))
    threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True).start()
    while True:
        kind, value = steps.get()
        if kind == "error":
            raise value
        if kind == "done":
            return value
        yield value


def _gallery(result: S.GenerateResult) -> list:
    return list(zip(result.images, result.captions))


def random_seed() -> int:
    return random.randrange(0, 2 ** 31)


def flag_multistep(model: str, steps, ts: str | None) -> bool:
    """Whether the UI should use the progress-reporting generate (multistep, Heun)."""
    try:
        return get_spec(model).kind == "edm" or bool(ts and str(ts).strip()) or int(steps or 1) > 1
    except (ValueError, TypeError):
        return False


def on_steps_change(model: str, steps, ts: str | None):
    multi = flag_multistep(model, steps, ts)
    return gr.update(visible=not multi), gr.update(visible=multi)


# ----------------------------------------------------------------------------- generate
def _request(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps) -> S.GenerateRequest:
    return S.GenerateRequest(model=model, steps=steps, ts=ts, seed=seed, batch_size=batch_size,
                             dropout=dropout, class_label=class_label, heun_steps=heun_steps)


def generate(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps):
    """Batched (Gradio ``batch=True``): concurrent requests with equal settings run as one batch.

    Each argument is a list with one entry per queued request; the parameters are named in the
    singular because Gradio publishes these names as the API's (one request's values). Invalid
    requests, and those whose model cannot be loaded (with the real cause: still downloading, the
    download failed, not on disk), fail alone: when all fail the call raises (the client sees the
    message); otherwise their gallery is empty and the info line carries the error.
    """
    reqs = [_request(*args) for args in zip(model, steps, ts, seed, batch_size, dropout, class_label,
                                            heun_steps)]
    errors: list[str | None] = [None] * len(reqs)
    for i, req in enumerate(reqs):
        try:
            S.plan(req)
            S.check_download(str(req.model))
        except S.USER_ERRORS as e:
            errors[i] = bound(str(e))
    results = _generate_per_model(reqs, errors)
    if all(e is not None for e in errors):
        raise gr.Error(errors[0], print_exception=False)
    return ([[] if e else _gallery(r) for e, r in zip(errors, results)],
            [f"Error: {e}" if e else r.summary() for e, r in zip(errors, results)])


def _generate_per_model(reqs: list, errors: list[str | None]) -> list:
    """The requests without an error, one ``generate_many`` per model (a model that fails to load
    fails its own rows, written into ``errors``); a result per request (None where failed)."""
    results: list = [None] * len(reqs)
    by_model: dict[str, list[int]] = {}
    for i, req in enumerate(reqs):
        if errors[i] is None:
            by_model.setdefault(str(req.model), []).append(i)
    for idx in by_model.values():
        try:
            for i, r in zip(idx, S.generate_many([reqs[i] for i in idx])):
                results[i] = r
        except S.USER_ERRORS as e:
            for i in idx:
                errors[i] = bound(str(e))
    return results


@shows_errors
def generate_steps(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps,
                   progress=gr.Progress()):
    """One request with a progress bar (multistep and Heun sampling). The gallery shows each
    step's denoised estimates as they come (a generator: the API returns its last output)."""
    req = _request(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps)
    S.plan(req)  # a bad request fails before the worker starts
    r = yield from _previews(_streamed(lambda preview: S.generate(req, progress_of(progress), preview)))
    yield _gallery(r), r.summary()


def _previews(stream: Iterator[tuple[int, int, list]]):
    """Each preview of ``stream`` as (gallery, info); returns the stream's result."""
    while True:
        try:
            i, n, images = next(stream)
        except StopIteration as done:
            return done.value
        yield [(im, f"step {i + 1}/{n}") for im in images], f"step {i + 1}/{n}..."


def generate_live(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps, live,
                  progress=gr.Progress()):
    """Live mode: a seed, class or dropout change regenerates (the event runs only the last of
    quick changes); with Live off nothing changes. Returns the gallery, the info and what
    :func:`remember` keeps for Compare."""
    if not live:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    # no step previews: nobody would see them, and they keep the sampler off its graphed fast path
    r = S.generate(_request(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps),
                   progress_of(progress))
    return _gallery(r), r.summary(), *remember(seed, batch_size, class_label)


def generate_example(model, steps, ts, seed, batch_size, dropout, class_label, progress=gr.Progress()):
    """An example row of Generate: the consistency-model controls only (no Heun column)."""
    yield from generate_steps(model, steps, ts, seed, batch_size, dropout, class_label, None, progress)


def remember(seed, batch_size, class_label):
    """The seed, batch size and class of a Generate click, kept for Compare."""
    return seed, batch_size, class_label


@shows_errors
def compare_teacher(model, seed, batch_size, class_label, heun_steps, progress=gr.Progress()):
    """The same seeds and classes on the EDM teacher (Heun), to set beside the one-step samples."""
    req = S.GenerateRequest(model=model, seed=seed, batch_size=batch_size, class_label=class_label,
                            heun_steps=heun_steps if get_spec(model).kind == "edm" else None)
    r = S.compare_with_teacher(req, progress_of(progress))
    return _gallery(r), f"Teacher {S.teacher_for(model)}: {r.summary()}"


# ----------------------------------------------------------------------------- editing
def _edit_outputs(r: S.EditResult):
    """(input as fitted, output) for the before/after slider, the reference, the summary."""
    return (r.input, r.output), r.reference, r.summary()


@shows_errors
def colorize(model, image, steps, ts, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.colorize(model, image, steps=steps, ts=ts, seed=seed,
                                    class_label=class_label, progress=progress_of(progress)))


@shows_errors
def inpaint(model, editor, steps, ts, seed, class_label, progress=gr.Progress()):
    """``editor``: an ImageEditor value (the upload and the painted layers)."""
    image, mask = editor_values.background(editor, "an image to inpaint"), editor_values.painted_mask(editor)
    return _edit_outputs(S.inpaint(model, image, mask, steps=steps, ts=ts, seed=seed,
                                   class_label=class_label, progress=progress_of(progress)))


@shows_errors
def super_resolve(model, image, is_low_res, patch_size, steps, ts, seed, class_label,
                  progress=gr.Progress()):
    return _edit_outputs(S.super_resolve(model, image, low_res=is_low_res, patch_size=patch_size,
                                         steps=steps, ts=ts, seed=seed, class_label=class_label,
                                         progress=progress_of(progress)))


def interpolation_inputs(mode: str):
    """Only the inputs of the chosen mode: the two seeds, or the two images."""
    return gr.update(visible=mode != "images"), gr.update(visible=mode == "images")


@shows_errors
def interpolate(model, mode, seed_a, seed_b, image_a, image_b, frames, steps, ts, class_label,
                progress=gr.Progress()):
    r = S.interpolate(model, mode=mode, seed_a=seed_a, seed_b=seed_b, image_a=image_a,
                      image_b=image_b, frames=frames, steps=steps, ts=ts, class_label=class_label,
                      progress=progress_of(progress))
    return list(zip(r.frames, r.captions)), r.gif_path, r.summary()


def interpolate_seeds(model, mode, seed_a, seed_b, frames, steps, ts, class_label, progress=gr.Progress()):
    """An example row of Interpolate by seeds (an example cannot hold empty image inputs)."""
    return interpolate(model, mode, seed_a, seed_b, None, None, frames, steps, ts, class_label, progress)


@shows_errors
def denoise(model, image, noise_level, add_noise, steps, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.denoise(model, image, noise_level=noise_level, add_noise=add_noise,
                                   steps=steps, seed=seed, class_label=class_label,
                                   progress=progress_of(progress)))


@shows_errors
def stroke_guided(model, editor, sigma, steps, seed, class_label, progress=gr.Progress()):
    painting = editor_values.painting(editor, "a rough painting")
    return _edit_outputs(S.stroke_guided(model, painting, sigma=sigma, steps=steps, seed=seed,
                                         class_label=class_label, progress=progress_of(progress)))
