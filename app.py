"""cm-studio web app: consistency models (Song et al. 2023) in the browser and over an API.

UI only: every computation is in :mod:`cm_core.service`, the page is built by :mod:`cm_app`.
Start with ``python app.py``; settings come from the environment (see README.md, "Configuration"):
``CM_CHECKPOINT_DIR``, ``CM_DEFAULT_MODEL``, ``GRADIO_SERVER_PORT`` / ``PORT`` (7860),
``GRADIO_SERVER_NAME`` (127.0.0.1; 0.0.0.0 in Docker), ``CM_SHARE`` (1 = public share link),
``CM_MODEL_CACHE_SIZE``, ``CM_CONCURRENCY``, ``CM_QUEUE_SIZE``.
API names: generate, generate_steps, compare_teacher, colorize, inpaint, super_resolve,
interpolate, denoise, stroke_guided (plus model_info, model_table, fetch_model, random_seed).
"""
from __future__ import annotations

import os
import time

from cm_app.bounds import install_bounded_errors, install_bounded_logs
from cm_app.layout import CSS, build_app
from cm_app.ranges import TYPED_JS
from cm_app.uploads import install_atomic_image_cache
from cm_core import service as S

install_atomic_image_cache()
install_bounded_errors()


def _warm_up() -> float:
    """Fetch the default model where allowed, then sample once; on ZeroGPU only load it (onto the
    emulated ``cuda``, as ZeroGPU expects: there is no GPU outside ``spaces.GPU``)."""
    t0 = time.perf_counter()
    S.ensure_model(S.default_model())
    if S.zero_gpu_active():
        S.cache().get(S.default_model())
        return time.perf_counter() - t0
    return S.warm_up() + (time.perf_counter() - t0)


def main() -> None:
    """Build the app, warm the default model up (unless ``CM_WARMUP=0``) and serve it."""
    t0 = time.perf_counter()
    install_bounded_logs()
    S.configure_torch_threads()
    demo = build_app()
    port = int(os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT") or 7860)
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    share = os.environ.get("CM_SHARE", "").lower() in ("1", "true", "yes")
    if os.environ.get("CM_WARMUP", "1") != "0":
        try:
            print(f"warm-up: {S.default_model()} ready in {_warm_up():.2f} s", flush=True)
        except S.USER_ERRORS as e:  # the app still starts; the UI shows the problem
            print(f"warm-up skipped: {e}", flush=True)
    print(f"cm-studio built in {time.perf_counter() - t0:.1f} s; serving on http://{host}:{port}", flush=True)
    demo.launch(server_name=host, server_port=port, share=share, show_error=True, css=CSS, js=TYPED_JS,
                footer_links=["api", "gradio"])


if __name__ == "__main__":
    main()
