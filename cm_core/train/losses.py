"""Distance functions d(x, y) of the consistency losses (paper eq. 10 and iCT's pseudo-Huber).

Every function takes two image batches [B, C, H, W] and returns per-sample distances [B].
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

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
    """LPIPS needs the ``lpips`` package and its VGG/AlexNet backbone weights on disk."""


def lpips_available() -> bool:
    """Whether LPIPS can run offline (package importable and backbone weights cached)."""
    try:
        _lpips_net()
    except LpipsUnavailable:
        return False
    return True


_LPIPS: list[torch.nn.Module] = []


VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def lpips_files() -> list[Path]:
    """The files LPIPS(VGG) needs: torchvision's ImageNet VGG-16 in the torch hub cache and the
    ``lpips`` package's linear-layer weights (``weights/v0.1/vgg.pth``, shipped in its wheel)."""
    files = [Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name]
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.origin:
        files.append(Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth")
    return files


def _lpips_problem() -> str | None:
    """Why LPIPS cannot run offline, or None."""
    if importlib.util.find_spec("lpips") is None or importlib.util.find_spec("torchvision") is None:
        return "the 'lpips' and 'torchvision' packages are not installed (pip install lpips torchvision)"
    missing = [str(f) for f in lpips_files() if not f.is_file()]
    if missing:
        return (f"missing weight file(s): {', '.join(missing)} (VGG-16: download {VGG16_URL} into "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}; vgg.pth comes with the lpips package)")
    return None


def _lpips_net() -> torch.nn.Module:
    if _LPIPS:
        return _LPIPS[0]
    problem = _lpips_problem()
    if problem:
        raise LpipsUnavailable(f"LPIPS is unavailable: {problem}; or use --loss l2 / pseudo_huber")
    try:
        import lpips  # noqa: PLC0415
        net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
    except Exception as e:  # noqa: BLE001 - missing package or weights that cannot be downloaded
        raise LpipsUnavailable(
            "LPIPS is unavailable: install the 'lpips' package and make its VGG weights available "
            f"offline (torchvision cache), or use --loss l2 / pseudo_huber ({type(e).__name__}: "
            f"{str(e)[:160]})") from None
    _LPIPS.append(net)
    return net


def lpips_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS(VGG) after bilinear upsampling to 224x224, as in the paper -> [B]."""
    net = _lpips_net().to(a.device)
    if a.shape[-1] < 256:
        a = F.interpolate(a, size=224, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=224, mode="bilinear", align_corners=False)
    return net(a, b).reshape(-1)


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
