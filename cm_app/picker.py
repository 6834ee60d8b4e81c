"""The model picker and the registry's endpoints: which model the tabs use, its information,
the table, and downloads started from the page."""
from __future__ import annotations

import gradio as gr

from cm_core import service as S
from cm_core.models.messages import bound
from cm_core.models.registry import get_spec

from .events import progress_of, shows_errors


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


@shows_errors
def model_info(model: str) -> dict:
    """What the registry and this machine know of one model: kind, method, dataset, resolution,
    size, whether it is on disk or fetched on use, its default sampling (an API endpoint). The
    file it loads from is ``local_file`` (a ``path`` key would make gradio_client download it)."""
    info = S.model_info(model)
    info["local_file"] = info.pop("path")
    return info


@shows_errors
def model_table():
    return S.model_rows()


def fetch_model(model: str) -> str:
    """Download a released model (an API endpoint); where it now is, or an error message."""
    return shows_errors(S.fetch_model)(model)


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
        path = S.fetch_model(model, progress_of(progress))
    except S.USER_ERRORS as e:
        return _fetch_failed(model, e)
    return _fetched(model, f"\n\nFetched to `{path}`.")


def fetch_on_choice(model: str, progress=gr.Progress()):
    """Where fetching on choice is allowed (a Space, ``CM_AUTO_FETCH=1``), download the chosen
    model now, with a progress bar; elsewhere, or when it is on disk, change nothing."""
    try:
        if not S.ensure_model(model, progress_of(progress)):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    except S.USER_ERRORS as e:
        return _fetch_failed(model, e)
    return _fetched(model, "")
