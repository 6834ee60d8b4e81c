"""The page: intro, model picker and registry table, the tabs, and every event with its api_name.

API names: generate, generate_steps, compare_teacher, colorize, inpaint, super_resolve,
interpolate, denoise, stroke_guided (plus model_info, model_table, fetch_model).
"""
from __future__ import annotations

import gradio as gr

from cm_core import service as S
from cm_core.models.registry import get_spec

from . import handlers as H
from . import picker as P
from . import tabs as T
from .components import _gpu
from .ranges import install_range_messages, live_js, raw_numbers_js

INTRO = """
# cm-studio: consistency models

**Consistency models** (Song, Dhariwal, Chen & Sutskever, 2023) map a noisy image at *any* noise level
straight to a clean image, `f(x_σ, σ) ≈ x_0`. So one network evaluation turns pure noise (σ = 80) into a
sample: **one-step generation**. Extra steps trade time for quality: denoise, add back noise at a smaller
σ (the step indices `ts` on a 40-point Karras grid), denoise again. The same trick edits images
zero-shot: after each step, the known part of a reference (its grey levels, the unmasked pixels, its
low-resolution patch means) is put back. **CD** models are distilled from an EDM diffusion teacher (L2 or
LPIPS metric), **CT** models are trained from scratch; the **EDM teacher** needs its Heun ODE sampler
(e.g. 40 steps = 79 evaluations) for comparable quality.
"""
CONTROLS = """
**Controls.** *Model*: any checkpoint of the registry (the embedded 32 px digits models run on any CPU).
*Steps*: network evaluations (1 = one-step); *ts*: explicit grid indices for experts, e.g. `0,22,39`
(or `0,106,200/201` for another grid), overriding *Steps*; on Generate it also takes noise levels,
`sigmas: 80, 40, 20, 10, 5` (one evaluation at each, from noise at the first); *Heun steps*: the EDM teacher's sampler.
*Seed*: image *i* of a batch uses seed + *i*, so an image does not depend on the batch size.
*Dropout*: Monte-Carlo dropout at inference (0 = deterministic). *Class*: the label of class-conditional
models (searchable; *random* draws one per image from its seed). Editing tabs use *Steps* as in
multistep sampling; each shows the input as fitted against the output (drag the slider), and the
reference actually used.
"""
CSS = """
#gallery img, .pixelated img, .result img, .upload img { image-rendering: pixelated; }
/* results at a readable size: the page scales the model-sized images up (nearest-neighbour) */
.result img { width: 100% !important; height: auto !important; max-height: none !important;
              object-fit: contain; }
.result .image-frame, .result button { width: 100%; }
@media (min-width: 800px) { .result { max-width: 520px; } }
/* galleries: at most two columns on a phone (thumbnails of at least 160 px) */
@media (max-width: 640px) { .samples .grid-container { --grid-cols: 2 !important; } }
/* the page's side margins shrink on a phone (32 px on a desktop, 8 px at 390 px); a top-level rule:
   Gradio scopes rules inside @media to the content, which this padding is outside of */
.main.fillable { padding-left: clamp(8px, 4vw - 8px, 32px) !important;
                 padding-right: clamp(8px, 4vw - 8px, 32px) !important; }
/* an upload keeps a usable box whatever its size (a 16 px image does not collapse it) */
.upload img { width: 100%; height: 100%; object-fit: contain; }
"""


def _header(name: str) -> tuple[gr.Dropdown, gr.Textbox, gr.Markdown, gr.Button, gr.Dataframe, gr.Button]:
    """Intro, the model picker (runnable models first, each labelled with its state) with its
    description and messages, the model in use (hidden: the tabs' model input), the fetch button
    and the registry table."""
    gr.Markdown(INTRO)
    with gr.Row():
        model = gr.Dropdown(S.model_choices(), value=name, label="Model", filterable=True,
                            allow_custom_value=True, scale=1, elem_id="model")
        model_md = gr.Markdown(S.model_markdown(name), elem_id="model-info")
    active = gr.Textbox(name, visible=False, label="Model")  # the last runnable pick: what the tabs run
    fetch_btn = gr.Button("Fetch this model (download)", visible=False)
    with gr.Accordion("All models (registry)", open=False):
        table = gr.Dataframe(S.model_rows(), headers=S.TABLE_HEADERS, interactive=False, wrap=True)
        refresh = gr.Button("Refresh", size="sm")
    with gr.Accordion("What the controls do", open=False):
        gr.Markdown(CONTROLS)
    return model, active, model_md, fetch_btn, table, refresh


def _model_events(demo: gr.Blocks, model: gr.Dropdown, active: gr.Textbox, model_md: gr.Markdown,
                  fetch_btn: gr.Button, table: gr.Dataframe, refresh: gr.Button, gen: T.Tab,
                  tabs: list[T.Tab]) -> None:
    """Picking a model that can run updates the model in use, the info, the class dropdowns and
    step sliders of ``tabs`` (the generate tab first), the generate buttons; one that cannot only
    says so (:func:`cm_app.picker.pick_model`). Fetch and refresh the table."""
    g = gen.extra
    parts = dict(cls=[t.cls for t in tabs], steps=[t.steps for t in tabs if t.steps is not None],
                 g_ts=g["ts"], g_heun=g["heun"], gen_btn=gen.button, gen_steps_btn=g["gen_steps_btn"],
                 cmp_btn=g["cmp_btn"])
    picked = [model_md, fetch_btn, active, *parts["cls"], *parts["steps"], g["ts"], g["heun"], gen.button,
              g["gen_steps_btn"], g["cmp_btn"]]

    def on_model_change(model: str, in_use: str):
        return P.pick_model(model, in_use, parts, model_md, fetch_btn, active)
    fetching = dict(concurrency_id="fetch", concurrency_limit=None)  # each bounded by its deadline
    fetched = [model_md, table, model, active]
    model.change(on_model_change, [model, active], picked, api_name=False, queue=False).then(
        P.fetch_on_choice, model, fetched, api_name=False, **fetching)  # a Space: download now
    for ev in (gen.steps.change, g["ts"].change):
        ev(H.on_steps_change, [active, gen.steps, g["ts"]], [gen.button, g["gen_steps_btn"]], api_name=False,
           queue=False, preprocess=False)  # any value typed: the run itself refuses one out of range
    fetch_btn.click(P.fetch_in_page, model, fetched, api_name=False, **fetching)
    gr.api(P.fetch_model, api_name="fetch_model", **fetching)
    demo.load(on_model_change, [model, active], picked, api_name=False, queue=False)
    refresh.click(P.model_table, None, table, api_name="model_table", queue=False)
    gr.api(P.model_info, api_name="model_info", queue=False)  # one named JSON output


def _run_events(gen: T.Tab, edits: dict[str, T.Tab]) -> None:
    """The model-running events (compute slots, see :func:`cm_app.components._gpu`); ``edits`` maps
    api_name to its tab."""
    _gpu(gen.button.click, H.generate, gen.inputs, gen.outputs, "generate", batch=True,
         max_batch_size=S.max_batched_requests())
    _gpu(gen.extra["gen_steps_btn"].click, H.generate_steps, gen.inputs, gen.outputs, "generate_steps")
    for btn in (gen.button, gen.extra["gen_steps_btn"]):  # remember what this click samples
        btn.click(H.remember, gen.extra["used"], gen.extra["last"], queue=False, api_name=False,
                  js=raw_numbers_js(gen.extra["used"]), preprocess=False)
    live = [*gen.inputs, gen.extra["live"]]
    for comp in gen.extra["live_triggers"]:  # Live: only the last of quick changes runs
        _gpu(comp.change, H.generate_live, live, [*gen.outputs, *gen.extra["last"]], None, js=live_js(live),
             trigger_mode="always_last", show_progress="minimal")
    _gpu(gen.extra["cmp_btn"].click, H.compare_teacher, gen.extra["compare_inputs"],
         gen.extra["compare_outputs"], "compare_teacher")
    for api_name, tab in edits.items():
        _gpu(tab.button.click, getattr(H, api_name), tab.inputs, tab.outputs, api_name)


def build_app() -> gr.Blocks:
    install_range_messages()
    name = S.default_model()
    spec = get_spec(name)
    ex = S.example_files()
    # output images and uploads go to Gradio's cache folder: files older than an hour are deleted
    # every hour, so a long-running Space's disk does not fill up with galleries
    with gr.Blocks(title="cm-studio: consistency models", delete_cache=(3600, 3600)) as demo:
        model, active, model_md, fetch_btn, table, refresh = _header(name)
        with gr.Tabs():  # the tabs run the model in use (the picker's last runnable choice)
            gen = T.generate_tab(active, name, spec)
            edits = {"colorize": T.colorize_tab(active, name, spec, ex),
                     "inpaint": T.inpaint_tab(active, name, spec, ex),
                     "super_resolve": T.super_resolution_tab(active, name, spec, ex),
                     "interpolate": T.interpolate_tab(active, name, spec),
                     "denoise": T.denoise_tab(active, name, spec, ex),
                     "stroke_guided": T.stroke_tab(active, name, spec, ex)}
        _model_events(demo, model, active, model_md, fetch_btn, table, refresh, gen, [gen, *edits.values()])
        _run_events(gen, edits)
    demo.queue(max_size=S.queue_size(), default_concurrency_limit=S.concurrency())
    return demo
