"""Export to diffusers: a ``ConsistencyModelPipeline`` folder from any registry model or file.

``export_pipeline("cd_digits32", "out/")`` writes ``model_index.json``, ``unet/`` (our
``UNet2DModel``, config + safetensors, with ``num_class_embeds`` for class-conditional models) and
``scheduler/`` (``CMStochasticIterativeScheduler`` with the model's ``sigma_min``, ``sigma_max``,
``sigma_data``, rho 7 and ``num_train_timesteps`` = the model's Karras grid), the layout of
diffusers' ``scripts/convert_consistency_to_diffusers.py`` and of the ``openai/diffusers-*`` repos.
``ConsistencyModelPipeline.from_pretrained(out)`` then draws what :func:`cm_core.sampling.onestep`
/ ``multistep`` draw from the same noise (``latents = x_T / sigma_max``; ``timesteps=[22, 0]`` on a
40-point grid is our ``ts`` 0,22,39).

EDM teachers are refused: diffusers has no pipeline that samples an EDM-preconditioned network
with Heun's method, and a ``ConsistencyModelPipeline`` would apply the consistency boundary
scalings to it and draw wrong images. ``unet_only=True`` writes just the ``UNet2DModel`` folder
(its ``config.json`` records ``cm_kind: edm``) for use with your own sampler.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError, load_denoiser
from .files import write_text_atomic
from .registry import REGISTRY, ArchSpec

CM_MODELS = tuple(n for n, s in REGISTRY.items() if s.kind == "cm")


def _grid_steps(source: str | os.PathLike, steps: int | None) -> int:
    if steps is not None:
        return steps
    spec = REGISTRY.get(str(source))
    return spec.grid_size if spec else 40


def export_pipeline(source: str | os.PathLike, out: str | os.PathLike,
                    arch: ArchSpec | dict | None = None, kind: str | None = None,
                    steps: int | None = None, unet_only: bool = False) -> Path:
    """Write a diffusers folder for ``source`` (registry name, ``.pt``/``.safetensors``, folder).

    ``steps``: ``num_train_timesteps`` of the scheduler (default: the registry model's grid, else
    40). ``unet_only``: write ``out`` as a ``UNet2DModel`` folder instead of a pipeline (the only
    form offered for EDM teachers). Weights are float32 safetensors. Returns ``out``.
    """
    den = load_denoiser(source, arch=arch, kind=kind, device="cpu", dtype=torch.float32)
    out = Path(out)
    if unet_only:
        den.net.save_pretrained(str(out), safe_serialization=True)
        _annotate(out / "config.json", den.kind)
        return out
    if den.kind != "cm":
        raise CheckpointError(
            f"{den.name} is an EDM teacher: diffusers' ConsistencyModelPipeline would sample it with "
            "the consistency boundary scalings and draw wrong images, and diffusers has no Heun "
            "pipeline for EDM networks. Export a consistency model instead "
            f"({', '.join(CM_MODELS)}), or pass --unet-only to write just its UNet2DModel")
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline
    scheduler = CMStochasticIterativeScheduler(
        num_train_timesteps=_grid_steps(source, steps), sigma_min=den.sigma_min,
        sigma_max=den.sigma_max, sigma_data=den.sigma_data, s_noise=1.0, rho=7.0, clip_denoised=True)
    pipe = ConsistencyModelPipeline(unet=den.net, scheduler=scheduler)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def _annotate(config: Path, kind: str) -> None:
    """Record the network's preconditioning (``cm`` or ``edm``) in its ``config.json`` (atomically);
    diffusers ignores unknown keys starting with an underscore."""
    cfg: dict[str, Any] = json.loads(config.read_text())
    cfg["_cm_kind"] = kind
    write_text_atomic(config, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False,
                api: Any | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` with ``HfApi.upload_folder``; returns
    the commit URL. Needs a token (``huggingface-cli login`` or ``$HF_TOKEN``)."""
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message="Upload consistency-model pipeline exported by cm-studio")
    return str(getattr(info, "commit_url", info))
