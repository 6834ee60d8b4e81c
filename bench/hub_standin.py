"""A stand-in for a released ``openai/diffusers-*`` snapshot: random weights of its architecture.

    HF_HUB_CACHE=/tmp/hub python bench/hub_standin.py cd_imagenet64_lpips
    HF_HUB_CACHE=/tmp/hub HF_HUB_OFFLINE=1 python -m cm_core models --plan cd_imagenet64_lpips

Speed depends on the architecture, not on the weights, so commands that load a released model
from the Hub (``models --plan``, the app) can be timed on a machine that cannot download it. The
snapshot has the layout of the real repos (``model_index.json``, ``unet/``, ``scheduler/``, with
``refs/main`` naming it) in ``$HF_HUB_CACHE`` (default ``~/.cache/huggingface/hub``); the weights
are those of ``bench.make_denoiser`` (seed 0). Errors measured on it are not those of the
released weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_denoiser  # noqa: E402
from cm_core.models.registry import REGISTRY, get_spec  # noqa: E402

COMMIT = "0" * 40  # a made-up revision: no real snapshot has it


def write_standin(name: str, cache: Path) -> Path:
    """Write the stand-in snapshot of registry model ``name`` under ``cache``; its folder."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline
    spec = get_spec(name)
    if not spec.hub_repo:
        raise SystemExit(f"{name} has no Hub repo; choose one of "
                         f"{', '.join(n for n, s in REGISTRY.items() if s.hub_repo)}")
    den = make_denoiser(spec, torch.device("cpu"))
    sched = CMStochasticIterativeScheduler(num_train_timesteps=spec.grid_size, sigma_min=spec.sigma_min,
                                           sigma_max=spec.sigma_max)
    repo = cache / f"models--{spec.hub_repo.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    ConsistencyModelPipeline(unet=den.net, scheduler=sched).save_pretrained(snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def main() -> None:
    from huggingface_hub.constants import HF_HUB_CACHE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="registry names with a Hub repo")
    ap.add_argument("--cache", type=Path, default=Path(HF_HUB_CACHE), help="default: $HF_HUB_CACHE")
    args = ap.parse_args()
    for name in args.models:
        print(f"{name}: {write_standin(name, args.cache)}")


if __name__ == "__main__":
    main()
