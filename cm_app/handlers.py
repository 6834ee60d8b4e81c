"""Event handlers: thin adapters from Gradio inputs to :mod:`cm_core.service` and back.

Each model-running handler is also a public API endpoint (its api_name is set in
:mod:`cm_app.layout`); the library's user errors become ``gr.Error`` messages.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import queue
import random
import threading
from collections.abc import Iterator

import gradio as gr

from cm_core import service as S
from cm_core.models.messages import bound
from cm_core.models.registry import get_spec

from . import editor_values
from .clients import client_alive


@contextlib.contextmanager
def _as_messages() -> Iterator[None]:
    """Raise the library's user errors as ``gr.Error`` messages; ``S.Cancelled`` (nobody is left
    to read it) as an invisible one, with no traceback in the log. A ``gr.Error`` passes as it is
    (it is a ValueError: ``str()`` of it would add quotes)."""
    try:
        yield
    except gr.Error:
        raise
    except S.Cancelled:
        raise gr.Error("cancelled", visible=False, print_exception=False) from None
    except S.USER_ERRORS as e:
        raise gr.Error(bound(str(e)), print_exception=False) from None


def _err(fn):
    """Show the library's user errors (bad input, missing checkpoint) as a message, not a crash
    (for a generator handler too: its errors come while it is iterated)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streamed(*args, **kwargs):
            with _as_messages():
                return (yield from fn(*args, **kwargs))
        return streamed

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with _as_messages():
            return fn(*args, **kwargs)
    return wrapped


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


def _progress(progress: gr.Progress) -> S.Progress:
    """``progress`` as the library's callback; it raises ``S.Cancelled`` once the client has left
    (:func:`cm_app.clients.client_alive`), which stops the work between network evaluations."""
    alive = client_alive()

    def report(frac: float, desc: str) -> None:
        if not alive():
            raise S.Cancelled("the client left")
        progress(frac, desc=desc)
    return report


def _gallery(result: S.GenerateResult) -> list:
    return list(zip(result.images, result.captions))


# ----------------------------------------------------------------------------- model picker
def pick_model(name: str, active: str, tabs: dict, model_md, fetch_btn, active_box) -> dict:
    """What picking ``name`` changes. A model that can run here (on disk, or fetched on use)
    becomes the one the tabs use, with its classes and step ranges (``tabs``: the components
    :func:`model_updates` takes); another one only gets a message under the picker, and the tabs
    keep ``active``: nothing else changes, no component shows an error."""
    keep = f"The tabs keep using **{active}**."
    try:
        runs = S.runnable(name)
    except S.USER_ERRORS as e:
        return {model_md: f"**{bound(str(e))}**\n\n{keep}"}
    if not runs:  # the Fetch button where it can be downloaded (a registry URL)
        return {model_md: S.model_markdown(name) + f"\n\n**{name} cannot run here until it is downloaded.** {keep}",
                fetch_btn: gr.update(visible=bool(get_spec(name).url))}
    out = model_updates(name, model_md=model_md, fetch_btn=fetch_btn, **tabs)
    out[active_box] = name
    return out


def model_updates(name: str, cls: list, steps: list, g_ts, g_heun, gen_btn, gen_steps_btn,
                  cmp_btn, model_md, fetch_btn) -> dict:
    """What changes when another model is picked: info, fetch button, classes, step ranges."""
    spec = get_spec(name)
    info = S.model_info(name)
    choices = S.class_choices(spec)
    edm = spec.kind == "edm"
    out = {model_md: S.model_markdown(name),
           fetch_btn: gr.update(visible=info["fetchable"] and not (info["available"] or info["auto_fetch"])),
           g_ts: gr.update(placeholder=",".join(map(str, spec.ts)), value="", visible=not edm),
           g_heun: gr.update(value=spec.heun_steps, visible=edm),
           gen_btn: gr.update(visible=not edm), gen_steps_btn: gr.update(visible=edm),
           cmp_btn: gr.update(visible=not edm)}
    for c in cls:
        out[c] = gr.update(choices=choices or [S.RANDOM_CLASS], value=S.RANDOM_CLASS, visible=bool(choices))
    for i, st in enumerate(steps):
        e = spec.edit_steps
        out[st] = gr.update(maximum=spec.grid_size - 1, value=(1, e, e, e, 1)[i], visible=not (edm and i == 0))
    return out


@_err
def model_info(model: str) -> dict:
    """What the registry and this machine know of one model: kind, method, dataset, resolution,
    size, whether it is on disk or fetched on use, its default sampling (an API endpoint). The
    file it loads from is ``local_file`` (a ``path`` key would make gradio_client download it)."""
    info = S.model_info(model)
    info["local_file"] = info.pop("path")
    return info


@_err
def model_table():
    return S.model_rows()


def fetch_model(model: str) -> str:
    """Download a released model (an API endpoint); where it now is, or an error message."""
    return _err(S.fetch_model)(model)


def _fetch_failed(model: str, e: Exception) -> tuple:
    """The picker's outputs after a failed download: a message; the table, the labels and the
    model in use stay as they were."""
    return f"**Fetching {model} failed**: {bound(str(e))}", gr.skip(), gr.skip(), gr.skip()


def _fetched(model: str, done: str) -> tuple:
    """The picker's outputs after ``model`` arrived: info, table, labels, the model in use."""
    return (S.model_markdown(model) + done, S.model_rows(), gr.update(choices=S.model_choices()), model)


def fetch_in_page(model: str, progress=gr.Progress()):
    """The Fetch button: download with a progress bar. A failure is a message under the picker
    (the table and the model in use stay as they were: no component turns into an error)."""
    try:
        path = S.fetch_model(model, _progress(progress))
    except S.USER_ERRORS as e:
        return _fetch_failed(model, e)
    return _fetched(model, f"\n\nFetched to `{path}`.")


def fetch_on_choice(model: str, progress=gr.Progress()):
    """Where fetching on choice is allowed (a Space, ``CM_AUTO_FETCH=1``), download the chosen
    model now, with a progress bar; elsewhere, or when it is on disk, change nothing."""
    try:
        if not S.ensure_model(model, _progress(progress)):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    except S.USER_ERRORS as e:
        return _fetch_failed(model, e)
    return _fetched(model, "")


def random_seed() -> int:
    return random.randrange(0, 2 ** 31)


def _flag_multistep(model: str, steps, ts: str | None) -> bool:
    """Whether the UI should use the progress-reporting generate (multistep, Heun)."""
    try:
        return get_spec(model).kind == "edm" or bool(ts and str(ts).strip()) or int(steps or 1) > 1
    except (ValueError, TypeError):
        return False


def on_steps_change(model: str, steps, ts: str | None):
    multi = _flag_multistep(model, steps, ts)
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


@_err
def generate_steps(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps,
                   progress=gr.Progress()):
    """One request with a progress bar (multistep and Heun sampling). The gallery shows each
    step's denoised estimates as they come (a generator: the API returns its last output)."""
    req = _request(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps)
    S.plan(req)  # a bad request fails before the worker starts
    r = yield from _previews(_streamed(lambda preview: S.generate(req, _progress(progress), preview)))
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
                   _progress(progress))
    return _gallery(r), r.summary(), *remember(seed, batch_size, class_label)


def generate_example(model, steps, ts, seed, batch_size, dropout, class_label, progress=gr.Progress()):
    """An example row of Generate: the consistency-model controls only (no Heun column)."""
    yield from generate_steps(model, steps, ts, seed, batch_size, dropout, class_label, None, progress)


def remember(seed, batch_size, class_label):
    """The seed, batch size and class of a Generate click, kept for Compare."""
    return seed, batch_size, class_label


@_err
def compare_teacher(model, seed, batch_size, class_label, heun_steps, progress=gr.Progress()):
    """The same seeds and classes on the EDM teacher (Heun), to set beside the one-step samples."""
    req = S.GenerateRequest(model=model, seed=seed, batch_size=batch_size, class_label=class_label,
                            heun_steps=heun_steps if get_spec(model).kind == "edm" else None)
    r = S.compare_with_teacher(req, _progress(progress))
    return _gallery(r), f"Teacher {S.teacher_for(model)}: {r.summary()}"


# ----------------------------------------------------------------------------- editing
def _edit_outputs(r: S.EditResult):
    """(input as fitted, output) for the before/after slider, the reference, the summary."""
    return (r.input, r.output), r.reference, r.summary()


@_err
def colorize(model, image, steps, ts, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.colorize(model, image, steps=steps, ts=ts, seed=seed,
                                    class_label=class_label, progress=_progress(progress)))


@_err
def inpaint(model, editor, steps, ts, seed, class_label, progress=gr.Progress()):
    """``editor``: an ImageEditor value (the upload and the painted layers)."""
    image, mask = editor_values.background(editor, "an image to inpaint"), editor_values.painted_mask(editor)
    return _edit_outputs(S.inpaint(model, image, mask, steps=steps, ts=ts, seed=seed,
                                   class_label=class_label, progress=_progress(progress)))


@_err
def super_resolve(model, image, is_low_res, patch_size, steps, ts, seed, class_label,
                  progress=gr.Progress()):
    return _edit_outputs(S.super_resolve(model, image, low_res=is_low_res, patch_size=patch_size,
                                         steps=steps, ts=ts, seed=seed, class_label=class_label,
                                         progress=_progress(progress)))


def interpolation_inputs(mode: str):
    """Only the inputs of the chosen mode: the two seeds, or the two images."""
    return gr.update(visible=mode != "images"), gr.update(visible=mode == "images")


@_err
def interpolate(model, mode, seed_a, seed_b, image_a, image_b, frames, steps, ts, class_label,
                progress=gr.Progress()):
    r = S.interpolate(model, mode=mode, seed_a=seed_a, seed_b=seed_b, image_a=image_a,
                      image_b=image_b, frames=frames, steps=steps, ts=ts, class_label=class_label,
                      progress=_progress(progress))
    return list(zip(r.frames, r.captions)), r.gif_path, r.summary()


def interpolate_seeds(model, mode, seed_a, seed_b, frames, steps, ts, class_label, progress=gr.Progress()):
    """An example row of Interpolate by seeds (an example cannot hold empty image inputs)."""
    return interpolate(model, mode, seed_a, seed_b, None, None, frames, steps, ts, class_label, progress)


@_err
def denoise(model, image, noise_level, add_noise, steps, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.denoise(model, image, noise_level=noise_level, add_noise=add_noise,
                                   steps=steps, seed=seed, class_label=class_label,
                                   progress=_progress(progress)))


@_err
def stroke_guided(model, editor, sigma, steps, seed, class_label, progress=gr.Progress()):
    painting = editor_values.painting(editor, "a rough painting")
    return _edit_outputs(S.stroke_guided(model, painting, sigma=sigma, steps=steps, seed=seed,
                                         class_label=class_label, progress=_progress(progress)))
