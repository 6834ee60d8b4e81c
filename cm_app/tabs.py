"""One builder per tab. Each is called inside ``gr.Tabs()`` with the model in use, builds
its components (in the order the page shows them) and its examples, and returns what the events
need (:class:`Tab`); :mod:`cm_app.layout` attaches the handlers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from cm_core import service as S
from cm_core.models.registry import ModelSpec

from . import handlers as H
from .components import _class_dd, _examples, _io_images, _seed_class_button, _seed_row, _steps_ts
from .uploads import UploadEditor, UploadImage


@dataclass
class Tab:
    """A tab's handler inputs and outputs, its run button, class dropdown and steps slider (if any)."""

    inputs: list
    outputs: list
    button: gr.Button
    cls: gr.Dropdown
    steps: gr.Slider | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the generate tab's other components


def _gallery(label: str, height: int, **kw: Any) -> gr.Gallery:
    """Four columns on a desktop (thumbnails of at least 128 px), two on a phone (see the CSS)."""
    return gr.Gallery(label=label, format="png", columns=4, height=height, object_fit="contain",
                      buttons=["download", "download_all", "fullscreen"], **{"elem_classes": "samples", **kw})


def generate_tab(model: gr.Textbox, name: str, spec: ModelSpec) -> Tab:
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column(scale=1):
                steps, ts = _steps_ts(spec, 1)
                heun = gr.Slider(2, S.MAX_HEUN_STEPS, value=spec.heun_steps, step=1,
                                 label="Heun steps (EDM teacher: 2n-1 evaluations)", visible=spec.kind == "edm")
                seed = _seed_row()
                batch = gr.Slider(1, S.max_batch(), value=4, step=1, label="Batch size")
                drop = gr.Slider(0.0, 0.9, value=0.0, step=0.05, label="Dropout (inference)")
                cls = _class_dd(spec)
                multi = H.flag_multistep(name, 1, "")
                gen_btn = gr.Button("Generate", variant="primary", visible=not multi, elem_id="generate-btn")
                gen_steps_btn = gr.Button("Generate", variant="primary", visible=multi,
                                          elem_id="generate-steps-btn")
                cmp_btn = gr.Button("Compare with the EDM teacher (same seeds)", visible=spec.kind != "edm")
                live = gr.Checkbox(False, label="Live", elem_id="live",
                                   info="regenerate as the seed, class or dropout changes (the last change runs)")
            with gr.Column(scale=2):
                gallery = _gallery("Samples", 360, elem_id="gallery")
                info = gr.Markdown(elem_id="generate-info")
                t_gallery = _gallery("EDM teacher, same seeds", 360, elem_classes="samples pixelated")
                t_info = gr.Markdown(elem_id="teacher-info")
        inputs = [model, steps, ts, seed, batch, drop, cls, heun]
        # what the last Generate click used: Compare runs exactly the gallery's seeds and class,
        # whatever the boxes show since (Randomise); hidden, they keep the API's parameters
        last = [gr.Number(0, precision=0, visible=False), gr.Number(4, precision=0, visible=False),
                gr.Textbox(S.RANDOM_CLASS, visible=False)]
        choices = S.class_choices(spec)
        _examples([[name, 1, "", 0, 8, 0.0, S.RANDOM_CLASS], [name, 2, "", 0, 8, 0.0, S.RANDOM_CLASS],
                   [name, 1, "", 100, 8, 0.0, choices[4] if choices else S.RANDOM_CLASS]],
                  inputs[:-1], [gallery, info], H.generate_example)  # the visible controls only
    return Tab(inputs, [gallery, info], gen_btn, cls, steps, extra=dict(
        ts=ts, heun=heun, gen_steps_btn=gen_steps_btn, cmp_btn=cmp_btn,
        compare_inputs=[model, *last, heun], compare_outputs=[t_gallery, t_info],
        used=[seed, batch, cls], last=last, live=live, live_triggers=[seed, cls, drop]))


def colorize_tab(model: gr.Textbox, name: str, spec: ModelSpec, ex: dict[str, str]) -> Tab:
    with gr.Tab("Colorize", id="colorize"):
        with gr.Row():
            img = UploadImage(label="Image (colour or grey)", type="pil", image_mode=None, format="png")
            with gr.Column():
                steps, ts = _steps_ts(spec)
                seed, cls, btn = _seed_class_button(spec, "Colorize")
        out = list(_io_images())
        inputs = [model, img, steps, ts, seed, cls]
        _examples([[name, ex["grey"], 3, "", 0, S.RANDOM_CLASS]], inputs, out, H.colorize)
    return Tab(inputs, out, btn, cls, steps)


def inpaint_tab(model: gr.Textbox, name: str, spec: ModelSpec, ex: dict[str, str]) -> Tab:
    with gr.Tab("Inpaint", id="inpaint"):
        with gr.Row():
            ed = UploadEditor(label="Upload, then paint the region to fill", type="pil", elem_id="inpaint-editor",
                              image_mode="RGBA", format="png", sources=["upload", "clipboard"],
                              brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                              transforms=(), layers=False, height=360)
            with gr.Column():
                steps, ts = _steps_ts(spec)
                seed, cls, btn = _seed_class_button(spec, "Inpaint")
        out = list(_io_images())
        inputs = [model, ed, steps, ts, seed, cls]
        _examples([[name, {"background": ex["digit"], "layers": [ex["mask"]], "composite": ex["masked"]},
                    3, "", 0, S.RANDOM_CLASS]], inputs, out, H.inpaint)
    return Tab(inputs, out, btn, cls, steps)


def super_resolution_tab(model: gr.Textbox, name: str, spec: ModelSpec, ex: dict[str, str]) -> Tab:
    with gr.Tab("Super-resolution", id="super_resolve"):
        with gr.Row():
            img = UploadImage(label="Image", type="pil", image_mode=None, format="png")
            with gr.Column():
                low = gr.Checkbox(value=False, label="The upload is low-resolution: upsample it",
                                  info="off: a high-resolution upload is downsampled by the patch factor first")
                patch = gr.Dropdown([2, 4, 8], value=4, allow_custom_value=True,
                                    label="Patch factor (p x p pixels per low-res pixel)")
                steps, ts = _steps_ts(spec)
                seed, cls, btn = _seed_class_button(spec, "Super-resolve")
        out = list(_io_images())
        inputs = [model, img, low, patch, steps, ts, seed, cls]
        _examples([[name, ex["digit"], False, 4, 3, "", 0, S.RANDOM_CLASS],
                   [name, ex["lowres"], True, 4, 3, "", 0, S.RANDOM_CLASS]], inputs, out, H.super_resolve)
    return Tab(inputs, out, btn, cls, steps)


def interpolate_tab(model: gr.Textbox, name: str, spec: ModelSpec) -> Tab:
    with gr.Tab("Interpolate", id="interpolate"):
        with gr.Row():
            with gr.Column():
                mode = gr.Radio(["seeds", "images"], value="seeds", label="Interpolate between")
                with gr.Row(elem_id="interp-seeds") as seed_row:
                    a = gr.Number(value=0, precision=0, minimum=0, label="Seed A")
                    b = gr.Number(value=1, precision=0, minimum=0, label="Seed B")
                with gr.Row(visible=False, elem_id="interp-images") as image_row:
                    ia = UploadImage(label="Image A (its noise)", type="pil", image_mode=None, format="png")
                    ib = UploadImage(label="Image B (its noise)", type="pil", image_mode=None, format="png")
                mode.change(H.interpolation_inputs, mode, [seed_row, image_row], queue=False, api_name=False)
            with gr.Column():
                frames = gr.Slider(2, 32, value=8, step=1, label="Frames")
                steps, ts = _steps_ts(spec, 1)
                cls = _class_dd(spec)
                btn = gr.Button("Interpolate", variant="primary")
        with gr.Row():
            gal = _gallery("Frames", 360, elem_classes="samples pixelated", elem_id="frames")
            gif = gr.Image(label="Animated GIF", type="filepath", interactive=False, elem_classes="result",
                           min_width=280)
        out = [gal, gif, gr.Markdown()]
        inputs = [model, mode, a, b, ia, ib, frames, steps, ts, cls]
        _examples([[name, "seeds", 0, 1, 8, 1, "", S.RANDOM_CLASS]], [model, mode, a, b, frames, steps, ts, cls],
                  out, H.interpolate_seeds)
    return Tab(inputs, out, btn, cls, steps)


def _few_steps(default: int) -> gr.Slider:
    return gr.Slider(1, 8, value=default, step=1, label="Steps")


def denoise_tab(model: gr.Textbox, name: str, spec: ModelSpec, ex: dict[str, str]) -> Tab:
    with gr.Tab("Denoise", id="denoise"):
        with gr.Row():
            img = UploadImage(label="Image (noisy, or clean with 'add noise')", type="pil", image_mode=None,
                              format="png")
            with gr.Column():
                level = gr.Slider(0, 255, value=40, step=1, label="Noise level (std in grey levels of 255)")
                add = gr.Checkbox(value=True, label="Add this much Gaussian noise first (demo)")
                steps = _few_steps(1)
                seed, cls, btn = _seed_class_button(spec, "Denoise")
        out = list(_io_images())
        inputs = [model, img, level, add, steps, seed, cls]
        _examples([[name, ex["digit"], 60, True, 1, 0, S.RANDOM_CLASS]], inputs, out, H.denoise)
    return Tab(inputs, out, btn, cls)


def stroke_tab(model: gr.Textbox, name: str, spec: ModelSpec, ex: dict[str, str]) -> Tab:
    with gr.Tab("Stroke-guided", id="stroke_guided"):
        with gr.Row():
            ed = UploadEditor(label="Paint rough strokes (or upload a painting)", type="pil",
                              image_mode="RGB", format="png", transforms=(), layers=False,
                              height=360, canvas_size=(256, 256), brush=gr.Brush(color_mode="defaults"))
            with gr.Column():
                sigma = gr.Slider(0.5, 20.0, value=4.0, step=0.5,
                                  label="Noise level sigma (higher follows the strokes less)")
                steps = _few_steps(2)
                seed, cls, btn = _seed_class_button(spec, "Generate from strokes")
        out = list(_io_images())
        inputs = [model, ed, sigma, steps, seed, cls]
        _examples([[name, {"background": ex["strokes"], "layers": [], "composite": None}, 4.0, 2, 0,
                    S.RANDOM_CLASS]], inputs, out, H.stroke_guided)
    return Tab(inputs, out, btn, cls)
