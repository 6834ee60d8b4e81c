"""cm-studio web app: consistency models (Song et al. 2023) in the browser and over an API.

UI only: every computation is in :mod:`cm_core.service`. Start with ``python app.py``; settings
come from the environment (see README.md, "Configuration"): ``CM_CHECKPOINT_DIR``, ``CM_DEFAULT_MODEL``,
``GRADIO_SERVER_PORT`` / ``PORT`` (7860), ``GRADIO_SERVER_NAME`` (127.0.0.1; 0.0.0.0 in Docker),
``CM_SHARE`` (1 = public share link), ``CM_MODEL_CACHE_SIZE``, ``CM_CONCURRENCY``, ``CM_QUEUE_SIZE``.
API names: generate, generate_steps, compare_teacher, colorize, inpaint, super_resolve,
interpolate, denoise, stroke_guided (plus model_info, model_table, fetch_model, random_seed).
"""
from __future__ import annotations

import functools
import os
import random
import time

import gradio as gr

from cm_core import service as S
from cm_core.registry import REGISTRY, get_spec

GPU = "gpu"  # one concurrency group for every event that runs a model
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
(or `0,106,200/201` for another grid), overriding *Steps*; *Heun steps*: the EDM teacher's sampler.
*Seed*: image *i* of a batch uses seed + *i*, so an image does not depend on the batch size.
*Dropout*: Monte-Carlo dropout at inference (0 = deterministic). *Class*: the label of class-conditional
models (searchable; *random* draws one per image from its seed). Editing tabs use *Steps* as in
multistep sampling; each shows the input, the reference actually used, and the output.
"""
CSS = """
#gallery img, .pixelated img { image-rendering: pixelated; }
"""


def _err(fn):
    """Show the library's user errors (bad input, missing checkpoint) as a message, not a crash."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except S.USER_ERRORS as e:
            raise gr.Error(str(e), print_exception=False) from None
    return wrapped


def _atomic_save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's ``save_pil_to_cache`` with an atomic write. Its files are named by content hash and
    rewritten in place, so two requests with an identical output image (the same upload shown as
    "input", a shared example) let one download the file while the other has truncated it: the
    client gets 0 bytes ("peer closed connection"; 1 in 50 in the load test). A temporary file
    then ``os.replace`` means readers see the old or the new (equal) bytes, never a partial file."""
    import tempfile
    from pathlib import Path

    from gradio import processing_utils as pu
    data = pu.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / pu.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return str(target)


def _install_atomic_image_cache() -> None:
    from gradio import processing_utils as pu
    if hasattr(pu, "encode_pil_to_bytes") and hasattr(pu, "hash_bytes"):
        pu.save_pil_to_cache = _atomic_save_pil_to_cache


_install_atomic_image_cache()


def _guard_upload(read, path):
    """Refuse an upload that is not an image or exceeds Pillow's pixel limit (a decompression
    bomb) from its header, before Gradio decodes it; damaged files get the same kind of message."""
    from PIL import Image

    from cm_core.images import ImageEditError, check_upload

    def clean(e: Exception) -> str:  # the server's temporary path is none of the user's business
        return str(e).replace(str(path), os.path.basename(str(path))) if path else str(e)
    try:
        if path:
            check_upload(str(path))
        return read()
    except ImageEditError as e:
        raise gr.Error(clean(e), print_exception=False) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise gr.Error(f"could not read the upload as an image ({clean(e)}); upload a PNG, JPEG, WebP, "
                       "GIF or BMP file", print_exception=False) from None


def UploadImage(**kw) -> gr.Image:  # noqa: N802 - reads like the component it makes
    """A ``gr.Image`` whose uploads pass :func:`_guard_upload` first. (Wrapped on the instance: a
    subclass would make Gradio write an ``app.pyi`` stub next to this file at every start.)"""
    comp = gr.Image(**kw)
    read = comp.preprocess
    comp.preprocess = lambda payload: _guard_upload(lambda: read(payload), getattr(payload, "path", None))
    return comp


def UploadEditor(**kw) -> gr.ImageEditor:  # noqa: N802
    """A ``gr.ImageEditor`` whose background and layers pass :func:`_guard_upload` first."""
    comp = gr.ImageEditor(**kw)
    read = comp.convert_and_format_image
    comp.convert_and_format_image = lambda file, flatten_on_white=False: _guard_upload(
        lambda: read(file, flatten_on_white), getattr(file, "path", None))
    return comp


def _progress(progress: gr.Progress):
    return lambda frac, desc: progress(frac, desc=desc)


def _gallery(result: S.GenerateResult) -> list:
    return list(zip(result.images, result.captions))


# ----------------------------------------------------------------------------- model picker
def model_updates(name: str, cls: list, steps: list, g_ts, g_heun, gen_btn, gen_steps_btn,
                  cmp_btn, model_md, fetch_btn) -> dict:
    """What changes when another model is picked: info, fetch button, classes, step ranges."""
    spec = get_spec(name)
    info = S.model_info(name)
    choices = S.class_choices(spec)
    edm = spec.kind == "edm"
    out = {model_md: S.model_markdown(name),
           fetch_btn: gr.update(visible=info["fetchable"] and not info["available"]),
           g_ts: gr.update(placeholder=",".join(map(str, spec.ts)), value="", visible=not edm),
           g_heun: gr.update(value=spec.heun_steps, visible=edm),
           gen_btn: gr.update(visible=not edm), gen_steps_btn: gr.update(visible=edm),
           cmp_btn: gr.update(visible=not edm)}
    for c in cls:
        out[c] = gr.update(choices=choices or [S.RANDOM_CLASS], value=S.RANDOM_CLASS, visible=bool(choices))
    for i, st in enumerate(steps):
        out[st] = gr.update(maximum=spec.steps - 1, value=(1, 2, 2, 2, 1)[i], visible=not (edm and i == 0))
    return out


@_err
def model_table():
    return S.model_rows()


@_err
def fetch_model(name: str, progress=gr.Progress()):
    path = S.fetch_model(name, _progress(progress))
    return S.model_markdown(name) + f"\n\nFetched to `{path}`.", S.model_rows()


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


def generate(models, steps, ts, seeds, batch_sizes, dropouts, class_labels, heun_steps):
    """Batched (Gradio ``batch=True``): concurrent requests with equal settings run as one batch.

    Each argument is a list with one entry per queued request. Invalid requests fail alone: when all
    are invalid the call raises (the client sees the message); otherwise their gallery is empty and
    the info line carries the error.
    """
    reqs, errors = [], []
    for args in zip(models, steps, ts, seeds, batch_sizes, dropouts, class_labels, heun_steps):
        req = _request(*args)
        try:
            S.plan(req)
            reqs.append(req)
            errors.append(None)
        except S.USER_ERRORS as e:
            reqs.append(None)
            errors.append(str(e))
    if all(e is not None for e in errors):
        raise gr.Error(errors[0], print_exception=False)
    good = [r for r in reqs if r is not None]
    try:
        results = iter(S.generate_many(good))
    except S.USER_ERRORS as e:
        raise gr.Error(str(e), print_exception=False) from None
    galleries, infos = [], []
    for err in errors:
        if err is not None:
            galleries.append([])
            infos.append(f"Error: {err}")
        else:
            r = next(results)
            galleries.append(_gallery(r))
            infos.append(r.summary())
    return galleries, infos


@_err
def generate_steps(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps,
                   progress=gr.Progress()):
    """One request with a progress bar (multistep and Heun sampling)."""
    r = S.generate(_request(model, steps, ts, seed, batch_size, dropout, class_label, heun_steps),
                   _progress(progress))
    return _gallery(r), r.summary()


@_err
def compare_teacher(model, seed, batch_size, class_label, heun_steps, progress=gr.Progress()):
    """The same seeds and classes on the EDM teacher (Heun), to set beside the one-step samples."""
    req = S.GenerateRequest(model=model, seed=seed, batch_size=batch_size, class_label=class_label,
                            heun_steps=heun_steps if get_spec(model).kind == "edm" else None)
    r = S.compare_with_teacher(req, _progress(progress))
    return _gallery(r), f"Teacher {S.teacher_for(model)}: {r.summary()}"


# ----------------------------------------------------------------------------- editing
def _edit_outputs(r: S.EditResult):
    return r.input, r.reference, r.output, r.summary()


@_err
def colorize(model, image, steps, ts, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.colorize(model, image, steps=steps, ts=ts, seed=seed,
                                    class_label=class_label, progress=_progress(progress)))


@_err
def inpaint(model, editor, steps, ts, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.inpaint(model, editor, steps=steps, ts=ts, seed=seed,
                                   class_label=class_label, progress=_progress(progress)))


@_err
def super_resolve(model, image, is_low_res, patch_size, steps, ts, seed, class_label,
                  progress=gr.Progress()):
    return _edit_outputs(S.super_resolve(model, image, low_res=is_low_res, patch_size=patch_size,
                                         steps=steps, ts=ts, seed=seed, class_label=class_label,
                                         progress=_progress(progress)))


@_err
def interpolate(model, mode, seed_a, seed_b, image_a, image_b, frames, steps, ts, class_label,
                progress=gr.Progress()):
    r = S.interpolate(model, mode=mode, seed_a=seed_a, seed_b=seed_b, image_a=image_a,
                      image_b=image_b, frames=frames, steps=steps, ts=ts, class_label=class_label,
                      progress=_progress(progress))
    return list(zip(r.frames, r.captions)), r.gif_path, r.summary()


@_err
def denoise(model, image, noise_level, add_noise, steps, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.denoise(model, image, noise_level=noise_level, add_noise=add_noise,
                                   steps=steps, seed=seed, class_label=class_label,
                                   progress=_progress(progress)))


@_err
def stroke_guided(model, editor, sigma, steps, seed, class_label, progress=gr.Progress()):
    return _edit_outputs(S.stroke_guided(model, editor, sigma=sigma, steps=steps, seed=seed,
                                         class_label=class_label, progress=_progress(progress)))


# ----------------------------------------------------------------------------- layout
def _gpu(event, fn, inputs, outputs, api_name, **kw):
    """Attach a model-running handler: one shared concurrency group, a public API name."""
    return event(fn, inputs, outputs, api_name=api_name, concurrency_id=GPU,
                 concurrency_limit=S.concurrency(), **kw)


def _seed_row(label: str = "Seed"):
    with gr.Row(equal_height=True):
        seed = gr.Number(value=0, precision=0, minimum=0, label=label, scale=4)
        dice = gr.Button("Randomise", scale=1, min_width=80)
    dice.click(random_seed, None, seed, api_name=False, queue=False)
    return seed


def _class_dd(spec):
    choices = S.class_choices(spec)
    return gr.Dropdown(choices or [S.RANDOM_CLASS], value=S.RANDOM_CLASS, label="Class", filterable=True,
                       allow_custom_value=True, visible=bool(choices),
                       info="type to search; 'random' = one per image from its seed")


def _steps_ts(spec, default: int = 2):
    with gr.Row():
        steps = gr.Slider(1, S.MAX_STEPS, value=default, step=1, label="Steps (network evaluations)")
        ts = gr.Textbox(label="ts (experts)", placeholder=",".join(map(str, spec.ts)), value="")
    return steps, ts


def _io_images():
    with gr.Row():
        used = gr.Image(label="Input (as fitted to the model)", type="pil", format="png",
                        interactive=False, elem_classes="pixelated")
        ref = gr.Image(label="Reference actually used", type="pil", format="png", interactive=False,
                       elem_classes="pixelated")
        out = gr.Image(label="Output", type="pil", format="png", interactive=False,
                       elem_classes="pixelated")
    info = gr.Markdown()
    return used, ref, out, info


def _examples(rows, inputs, outputs, fn):
    return gr.Examples(rows, inputs, outputs, fn=fn, cache_examples=S.cache_examples(),
                       cache_mode="lazy", examples_per_page=6)


def build_app() -> gr.Blocks:
    name = S.default_model()
    spec = get_spec(name)
    ex = S.example_files()
    with gr.Blocks(title="cm-studio: consistency models") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(list(REGISTRY), value=name, label="Model", filterable=True,
                                allow_custom_value=True, scale=1, elem_id="model")
            model_md = gr.Markdown(S.model_markdown(name))
        fetch_btn = gr.Button("Fetch this model (download)", visible=False)
        with gr.Accordion("All models (registry)", open=False):
            table = gr.Dataframe(S.model_rows(), headers=S.TABLE_HEADERS, interactive=False, wrap=True)
            refresh = gr.Button("Refresh", size="sm")
        with gr.Accordion("What the controls do", open=False):
            gr.Markdown(CONTROLS)

        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        g_steps, g_ts = _steps_ts(spec, 1)
                        g_heun = gr.Slider(2, S.MAX_HEUN_STEPS, value=spec.heun_steps, step=1,
                                           label="Heun steps (EDM teacher: 2n-1 evaluations)",
                                           visible=spec.kind == "edm")
                        g_seed = _seed_row()
                        g_batch = gr.Slider(1, S.max_batch(), value=4, step=1, label="Batch size")
                        g_drop = gr.Slider(0.0, 0.9, value=0.0, step=0.05, label="Dropout (inference)")
                        g_cls = _class_dd(spec)
                        multi = _flag_multistep(name, 1, "")
                        gen_btn = gr.Button("Generate", variant="primary", visible=not multi,
                                            elem_id="generate-btn")
                        gen_steps_btn = gr.Button("Generate", variant="primary", visible=multi,
                                                  elem_id="generate-steps-btn")
                        cmp_btn = gr.Button("Compare with the EDM teacher (same seeds)",
                                            visible=spec.kind != "edm")
                    with gr.Column(scale=2):
                        gallery = gr.Gallery(label="Samples", format="png", columns=4, height=360,
                                             object_fit="contain", elem_id="gallery",
                                             buttons=["download", "download_all", "fullscreen"])
                        g_info = gr.Markdown(elem_id="generate-info")
                        t_gallery = gr.Gallery(label="EDM teacher, same seeds", format="png", columns=4,
                                               height=240, object_fit="contain", elem_classes="pixelated",
                                               buttons=["download", "download_all", "fullscreen"])
                        t_info = gr.Markdown()
                g_inputs = [model, g_steps, g_ts, g_seed, g_batch, g_drop, g_cls, g_heun]
                _examples([[name, 1, "", 0, 8, 0.0, S.RANDOM_CLASS, spec.heun_steps],
                           [name, 2, "", 0, 8, 0.0, S.RANDOM_CLASS, spec.heun_steps],
                           [name, 1, "", 100, 8, 0.0, S.class_choices(spec)[4] if S.class_choices(spec)
                            else S.RANDOM_CLASS, spec.heun_steps]],
                          g_inputs, [gallery, g_info], generate_steps)

            with gr.Tab("Colorize", id="colorize"):
                with gr.Row():
                    c_img = UploadImage(label="Image (colour or grey)", type="pil", image_mode=None, format="png")
                    with gr.Column():
                        c_steps, c_ts = _steps_ts(spec)
                        c_seed = _seed_row()
                        c_cls = _class_dd(spec)
                        c_btn = gr.Button("Colorize", variant="primary")
                c_out = _io_images()
                c_inputs = [model, c_img, c_steps, c_ts, c_seed, c_cls]
                _examples([[name, ex["grey"], 3, "", 0, S.RANDOM_CLASS]], c_inputs, list(c_out), colorize)

            with gr.Tab("Inpaint", id="inpaint"):
                with gr.Row():
                    i_ed = UploadEditor(label="Upload, then paint the region to fill", type="pil",
                                          image_mode="RGBA", format="png", sources=["upload", "clipboard"],
                                          brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                                          transforms=(), layers=False, height=360)
                    with gr.Column():
                        i_steps, i_ts = _steps_ts(spec)
                        i_seed = _seed_row()
                        i_cls = _class_dd(spec)
                        i_btn = gr.Button("Inpaint", variant="primary")
                i_out = _io_images()
                i_inputs = [model, i_ed, i_steps, i_ts, i_seed, i_cls]
                _examples([[name, {"background": ex["digit"], "layers": [ex["mask"]], "composite": None},
                            3, "", 0, S.RANDOM_CLASS]], i_inputs, list(i_out), inpaint)

            with gr.Tab("Super-resolution", id="super_resolve"):
                with gr.Row():
                    s_img = UploadImage(label="Image", type="pil", image_mode=None, format="png")
                    with gr.Column():
                        s_low = gr.Radio([("high-resolution: downsample it first", False),
                                          ("low-resolution: upsample it", True)], value=False,
                                         label="The upload is")
                        s_patch = gr.Dropdown([2, 4, 8], value=4, allow_custom_value=True, label="Patch factor (p x p pixels per low-res pixel)")
                        s_steps, s_ts = _steps_ts(spec)
                        s_seed = _seed_row()
                        s_cls = _class_dd(spec)
                        s_btn = gr.Button("Super-resolve", variant="primary")
                s_out = _io_images()
                s_inputs = [model, s_img, s_low, s_patch, s_steps, s_ts, s_seed, s_cls]
                _examples([[name, ex["digit"], False, 4, 3, "", 0, S.RANDOM_CLASS],
                           [name, ex["lowres"], True, 4, 3, "", 0, S.RANDOM_CLASS]],
                          s_inputs, list(s_out), super_resolve)

            with gr.Tab("Interpolate", id="interpolate"):
                with gr.Row():
                    with gr.Column():
                        n_mode = gr.Radio(["seeds", "images"], value="seeds", label="Interpolate between")
                        with gr.Row():
                            n_a = gr.Number(value=0, precision=0, minimum=0, label="Seed A")
                            n_b = gr.Number(value=1, precision=0, minimum=0, label="Seed B")
                        with gr.Row():
                            n_ia = UploadImage(label="Image A (its noise)", type="pil", image_mode=None, format="png")
                            n_ib = UploadImage(label="Image B (its noise)", type="pil", image_mode=None, format="png")
                    with gr.Column():
                        n_frames = gr.Slider(2, 32, value=8, step=1, label="Frames")
                        n_steps, n_ts = _steps_ts(spec, 1)
                        n_cls = _class_dd(spec)
                        n_btn = gr.Button("Interpolate", variant="primary")
                with gr.Row():
                    n_gal = gr.Gallery(label="Frames", format="png", columns=8, height=200,
                                       elem_classes="pixelated", buttons=["download", "download_all"])
                    n_gif = gr.Image(label="Animated GIF", type="filepath", interactive=False,
                                     elem_classes="pixelated")
                n_info = gr.Markdown()
                n_inputs = [model, n_mode, n_a, n_b, n_ia, n_ib, n_frames, n_steps, n_ts, n_cls]
                _examples([[name, "seeds", 0, 1, None, None, 8, 1, "", S.RANDOM_CLASS]],
                          n_inputs, [n_gal, n_gif, n_info], interpolate)

            with gr.Tab("Denoise", id="denoise"):
                with gr.Row():
                    d_img = UploadImage(label="Image (noisy, or clean with 'add noise')", type="pil", image_mode=None, format="png")
                    with gr.Column():
                        d_level = gr.Slider(0, 255, value=40, step=1,
                                            label="Noise level (std in grey levels of 255)")
                        d_add = gr.Checkbox(value=True, label="Add this much Gaussian noise first (demo)")
                        d_steps = gr.Slider(1, 8, value=1, step=1, label="Steps")
                        d_seed = _seed_row()
                        d_cls = _class_dd(spec)
                        d_btn = gr.Button("Denoise", variant="primary")
                d_out = _io_images()
                d_inputs = [model, d_img, d_level, d_add, d_steps, d_seed, d_cls]
                _examples([[name, ex["digit"], 60, True, 1, 0, S.RANDOM_CLASS]], d_inputs, list(d_out), denoise)

            with gr.Tab("Stroke-guided", id="stroke_guided"):
                with gr.Row():
                    k_ed = UploadEditor(label="Paint rough strokes (or upload a painting)", type="pil",
                                          image_mode="RGB", format="png", transforms=(), layers=False,
                                          height=360, canvas_size=(256, 256),
                                          brush=gr.Brush(color_mode="defaults"))
                    with gr.Column():
                        k_sigma = gr.Slider(0.5, 20.0, value=4.0, step=0.5,
                                            label="Noise level sigma (higher follows the strokes less)")
                        k_steps = gr.Slider(1, 8, value=2, step=1, label="Steps")
                        k_seed = _seed_row()
                        k_cls = _class_dd(spec)
                        k_btn = gr.Button("Generate from strokes", variant="primary")
                k_out = _io_images()
                k_inputs = [model, k_ed, k_sigma, k_steps, k_seed, k_cls]
                _examples([[name, {"background": ex["strokes"], "layers": [], "composite": None}, 4.0, 2, 0,
                            S.RANDOM_CLASS]], k_inputs, list(k_out), stroke_guided)

        # ---------------------------------------------------------------- events
        all_cls = [g_cls, c_cls, i_cls, s_cls, n_cls, k_cls]
        all_steps = [g_steps, c_steps, i_steps, s_steps, n_steps]
        picked = [model_md, fetch_btn, *all_cls, *all_steps, g_ts, g_heun, gen_btn, gen_steps_btn, cmp_btn]

        @_err
        def on_model_change(name: str):
            return model_updates(name, all_cls, all_steps, g_ts, g_heun, gen_btn, gen_steps_btn, cmp_btn,
                                 model_md, fetch_btn)
        model.change(on_model_change, model, picked, api_name="model_info", queue=False)
        for ev in (g_steps.change, g_ts.change):
            ev(on_steps_change, [model, g_steps, g_ts], [gen_btn, gen_steps_btn], api_name=False, queue=False)
        fetch_btn.click(fetch_model, model, [model_md, table], api_name="fetch_model")
        demo.load(on_model_change, model, picked, api_name=False, queue=False)
        refresh.click(model_table, None, table, api_name="model_table", queue=False)
        _gpu(gen_btn.click, generate, g_inputs, [gallery, g_info], "generate", batch=True,
             max_batch_size=S.max_batched_requests())
        _gpu(gen_steps_btn.click, generate_steps, g_inputs, [gallery, g_info], "generate_steps")
        _gpu(cmp_btn.click, compare_teacher, [model, g_seed, g_batch, g_cls, g_heun], [t_gallery, t_info],
             "compare_teacher")
        _gpu(c_btn.click, colorize, c_inputs, list(c_out), "colorize")
        _gpu(i_btn.click, inpaint, i_inputs, list(i_out), "inpaint")
        _gpu(s_btn.click, super_resolve, s_inputs, list(s_out), "super_resolve")
        _gpu(n_btn.click, interpolate, n_inputs, [n_gal, n_gif, n_info], "interpolate")
        _gpu(d_btn.click, denoise, d_inputs, list(d_out), "denoise")
        _gpu(k_btn.click, stroke_guided, k_inputs, list(k_out), "stroke_guided")
    demo.queue(max_size=S.queue_size(), default_concurrency_limit=S.concurrency())
    return demo


def main() -> None:
    t0 = time.perf_counter()
    S.configure_torch_threads()
    demo = build_app()
    port = int(os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT") or 7860)
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    share = os.environ.get("CM_SHARE", "").lower() in ("1", "true", "yes")
    if os.environ.get("CM_WARMUP", "1") != "0":
        try:
            print(f"warm-up: {S.default_model()} ready in {S.warm_up():.2f} s", flush=True)
        except S.USER_ERRORS as e:  # the app still starts; the UI shows the problem
            print(f"warm-up skipped: {e}", flush=True)
    print(f"cm-studio built in {time.perf_counter() - t0:.1f} s; serving on http://{host}:{port}", flush=True)
    demo.launch(server_name=host, server_port=port, share=share, show_error=True, css=CSS,
                footer_links=["api", "gradio"])


if __name__ == "__main__":
    main()
