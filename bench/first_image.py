"""Time to the first image after the app starts (target on a GPU: <= 15 s).

    python bench/first_image.py                  # the embedded default model, this machine's device
    python bench/first_image.py --runs 3         # median of three cold starts

Starts ``python app.py`` as a user would (trained embedded weights, default settings: warm-up
on, ``CM_FAST=auto``, so on CUDA the fast path compiles in the background while eager serves),
then asks for one image over the API with ``gradio_client``. Prints, per cold start: seconds
until the page answers, until the first image is back (counted from the launch, so interpreter
start, imports, model load, CUDA init, warm-up and any compilation are all in it), and the
round trip of a second request. Each start uses a fresh Inductor cache directory (a true cold
start) unless ``--keep-cache``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def cold_start(model: str, keep_cache: bool) -> tuple[float, float, float]:
    """(seconds to page, seconds to first image, second-request seconds) of one app start."""
    from app_server import AppServer
    from gradio_client import Client
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CM_TORCH_THREADS": str(max(1, min(8, (os.cpu_count() or 2) // 2)))}
        if not keep_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        srv = AppServer(Path(tmp), env, real_models=True, timeout=600)
        try:
            client = Client(srv.url, verbose=False)
            client.predict(model, 1, "", 0, 1, 0.0, "random", 18, api_name="/generate")
            first = time.perf_counter() - srv.started
            t = time.perf_counter()
            client.predict(model, 1, "", 1, 1, 0.0, "random", 18, api_name="/generate")
            return srv.start_seconds, first, time.perf_counter() - t
        finally:
            srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cd_digits32", help="registry name (default: the embedded default)")
    ap.add_argument("--runs", type=int, default=1, help="cold starts to time (median reported)")
    ap.add_argument("--keep-cache", action="store_true", help="reuse ~/.cache/cm-studio/inductor (warm restart)")
    args = ap.parse_args()
    import torch
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    runs = [cold_start(args.model, args.keep_cache) for _ in range(args.runs)]
    for i, (page, first, second) in enumerate(runs):
        print(f"start {i + 1}: page {page:.1f} s, first image {first:.1f} s after launch, "
              f"second request {1e3 * second:.0f} ms", flush=True)
    med = statistics.median(r[1] for r in runs)
    print(f"{where}; torch {torch.__version__}; {args.model}: first image {med:.1f} s after launch "
          f"(median of {len(runs)}; target on a GPU <= 15 s)")


if __name__ == "__main__":
    main()
