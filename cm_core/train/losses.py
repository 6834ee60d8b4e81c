"""Distance functions d(x, y) of the consistency losses (paper eq. 10 and iCT's pseudo-Huber).

Every function takes two image batches [B, C, H, W] and returns per-sample distances [B].
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from .perceptual import LPIPS, lpips_224

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("l2", "pseudo_huber", "lpips")


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: ``||a - b||^2 / d`` -> [B]."""
    return (a - b).pow(2).flatten(1).mean(1)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """``sqrt(||a - b||^2 + c^2) - c`` -> [B] with ``c = 0.00054 sqrt(d)`` (Song & Dhariwal 2023)."""
    d = a[0].numel()
    c = 0.00054 * math.sqrt(d) if c is None else c
    return torch.sqrt((a - b).pow(2).flatten(1).sum(1) + c * c) - c


class LpipsUnavailable(RuntimeError):
    """LPIPS needs the VGG-16 ImageNet weights on disk (the linear layers ship with cm-studio)."""


_LPIPS: list[LPIPS] = []  # the loaded network, once
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LINEAR_WEIGHTS = Path(__file__).with_name("lpips_vgg_v0.1.safetensors")  # the lpips package's, BSD-2


def lpips_files() -> list[Path]:
    """The files LPIPS(VGG) reads: torchvision's ImageNet VGG-16 in the torch hub cache and the
    linear layers of LPIPS v0.1 (shipped here, from the lpips package's ``weights/v0.1/vgg.pth``)."""
    return [Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name, LINEAR_WEIGHTS]


def _lpips_net() -> LPIPS:
    if _LPIPS:
        return _LPIPS[0]
    missing = [str(f) for f in lpips_files() if not f.is_file()]
    if missing:
        raise LpipsUnavailable(f"LPIPS is unavailable: missing weight file(s) {', '.join(missing)} (VGG-16: "
                               f"download {VGG16_URL} into {Path(torch.hub.get_dir()) / 'checkpoints'}); "
                               "or use --loss l2 / pseudo_huber")
    try:
        net = LPIPS.from_files(*lpips_files())
    except (OSError, RuntimeError, ValueError) as e:
        raise LpipsUnavailable(f"LPIPS is unavailable: its weights could not be read ({type(e).__name__}: "
                               f"{str(e)[:160]}); or use --loss l2 / pseudo_huber") from None
    _LPIPS.append(net)
    return net


def lpips_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS(VGG) after bilinear upsampling to 224x224, as in the paper -> [B]."""
    return lpips_224(_lpips_net(), a, b)


def get_distance(name: str) -> Distance:
    """The distance called ``name`` (one of :data:`LOSSES`); LPIPS raises
    :class:`LpipsUnavailable` right away when its weights are missing."""
    if name == "l2":
        return l2
    if name == "pseudo_huber":
        return pseudo_huber
    if name == "lpips":
        _lpips_net()
        return lpips_distance
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
