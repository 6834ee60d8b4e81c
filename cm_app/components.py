"""Small reusable widgets of the tabs (each builds Gradio components in the current layout)."""
from __future__ import annotations

import inspect
from typing import Any

import gradio as gr

from cm_core import service as S
from cm_core.models.registry import ModelSpec

from .deploy import model_event
from .handlers import random_seed
from .ranges import raw_numbers_js

GPU = "gpu"  # the concurrency group of the model-running events (the batched generate has its own)


def _gpu(event: Any, fn: Any, inputs: list, outputs: list, api_name: str | None, **kw: Any) -> Any:
    """Attach a model-running handler with a public API name (``None``: a page-only event), fetch
    on first use, a compute slot and ZeroGPU (:func:`cm_app.deploy.model_event`).

    The compute slots bound the work (``$CM_CONCURRENCY``); the queue lets ``$CM_WAITERS`` more
    requests in, which wait for a download or a slot with a progress message. The batched generate
    keeps a group of its own of ``$CM_CONCURRENCY`` events, so that the requests queued meanwhile
    are merged into one batch. The request carries the numbers the boxes show, so an
    out-of-range one is refused with its range (:mod:`cm_app.ranges`)."""
    batched = kw.get("batch", False)
    group, limit = ("generate", S.concurrency()) if batched else (GPU, S.concurrency() + S.waiters())
    kw.setdefault("js", raw_numbers_js(inputs))
    return event(model_event(fn, api_name or fn.__name__, batched=batched), inputs, outputs,
                 api_name=api_name or False, concurrency_id=group, concurrency_limit=limit, **kw)


def _seed_row(label: str = "Seed") -> gr.Number:
    with gr.Row(equal_height=True):
        seed = gr.Number(value=0, precision=0, minimum=0, label=label, scale=4)
        dice = gr.Button("Randomise", scale=1, min_width=120)
    dice.click(random_seed, None, seed, api_name=False, queue=False)
    return seed


def _class_dd(spec: ModelSpec) -> gr.Dropdown:
    choices = S.class_choices(spec)
    return gr.Dropdown(choices or [S.RANDOM_CLASS], value=S.RANDOM_CLASS, label="Class", filterable=True,
                       allow_custom_value=True, visible=bool(choices),
                       info="type to search; 'random' = one per image from its seed")


def _seed_class_button(spec: ModelSpec, button: str) -> tuple[gr.Number, gr.Dropdown, gr.Button]:
    """The end of every editing tab's controls: seed row, class dropdown, the run button."""
    seed = _seed_row()
    cls = _class_dd(spec)
    btn = gr.Button(button, variant="primary")
    return seed, cls, btn


def _steps_ts(spec: ModelSpec, default: int | None = None) -> tuple[gr.Slider, gr.Textbox]:
    """Steps slider (default: the model's editing steps) and the expert ``ts`` box."""
    with gr.Row():
        steps = gr.Slider(1, S.MAX_STEPS, value=default or spec.edit_steps, step=1,
                          label="Steps (network evaluations)")
        ts = gr.Textbox(label="ts (experts)", placeholder=",".join(map(str, spec.ts)), value="",
                        info="grid indices, e.g. 0,22,39 (Generate also takes 'sigmas: 80, 40, 20, 10, 5')")
    return steps, ts


def _io_images() -> tuple[gr.ImageSlider, gr.Image, gr.Markdown]:
    """An editing tab's results: the input as fitted against the output (a before/after slider)
    and the reference actually used beside it, shown at least 256 CSS px wide (full width on a
    phone), upscaled nearest-neighbour by the page only: downloads and the API keep the model's
    resolution."""
    with gr.Row(equal_height=True):
        slider = gr.ImageSlider(label="Input as fitted (left) | output (right)", type="pil", format="png",
                                interactive=False, elem_classes="result", min_width=280, scale=1,
                                buttons=["download", "fullscreen"])
        ref = gr.Image(label="Reference actually used", type="pil", format="png", interactive=False,
                       elem_classes="result", min_width=280, scale=1, buttons=["download", "fullscreen"])
    info = gr.Markdown()
    return slider, ref, info


def _examples(rows: list, inputs: list, outputs: list, fn: Any) -> gr.Examples:
    """Examples of a tab whose first input is the model in use. The rows name the model they were
    made with (the default one); a click fills the other inputs only, so it never changes the
    model in use behind the picker's back. A cached example runs on the rows' model."""
    model = rows[0][0]
    run = model_event(fn, fn.__name__)
    sig = inspect.signature(fn)

    if inspect.isgeneratorfunction(fn):
        def on_model(*args: Any, **kwargs: Any) -> Any:
            return (yield from run(model, *args, **kwargs))
    else:
        def on_model(*args: Any, **kwargs: Any) -> Any:
            return run(model, *args, **kwargs)
    on_model.__name__ = fn.__name__
    on_model.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # type: ignore[attr-defined]
    return gr.Examples([r[1:] for r in rows], inputs[1:], outputs, fn=on_model,
                       cache_examples=S.cache_examples(), cache_mode="lazy", examples_per_page=6)
