"""LPIPS with the VGG-16 trunk (Zhang et al. 2018), the distance of the CD-LPIPS and CT-LPIPS losses.

Written out here rather than imported from the ``lpips`` package: that package builds its trunk with
``torchvision``, whose wheels on PyPI are CUDA builds that do not load beside a CPU build of torch
(``operator torchvision::nms does not exist``), so the loss could never run, nor be tested, on a CPU
machine. The computation is the package's (v0.1, ``net="vgg"``), layer for layer:

* inputs in [-1, 1] are shifted and scaled per channel (``ScalingLayer``);
* VGG-16's convolutional trunk (torchvision's ``vgg16().features``, same module indices) gives the
  maps after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3;
* each map is normalised to unit length over channels (eps 1e-10), the squared difference of the two
  images' maps goes through a 1x1 convolution to one channel (the learned linear layer, no bias) and
  is averaged over space; the five layers are summed.

Weights: the trunk from torchvision's ImageNet checkpoint (``vgg16-397923af.pth``, keys
``features.N.*``, read with ``torch.load(weights_only=True)``) and the linear layers of the lpips
package's ``weights/v0.1/vgg.pth`` (keys ``linK.model.1.weight``; BSD-2, shipped beside this file as
safetensors). Given the same weights, this module's distances equal the package's ``lpips.LPIPS(net=
"vgg")`` exactly (max difference 0.0 at 64 and 224 px, measured with the package's own code).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

# torchvision's VGG-16 "D" configuration; "M" is a 2x2 max pool
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # module indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(torch.nn.Module):
    """``LPIPS()(a, b)`` -> [B] distances of images ``a``, ``b`` [B, 3, H, W] in [-1, 1]. A new
    module has random weights; :meth:`load` reads the released ones."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        c = 3
        for v in _CFG:
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(c, int(v), 3, padding=1), torch.nn.ReLU()]
                c = int(v)
        self.features = torch.nn.Sequential(*layers)
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(ch, 1, 1, bias=False) for ch in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(SCALE)[None, :, None, None])

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five feature maps of ``x`` (already scaled)."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.taps((a - self.shift) / self.scale), self.taps((b - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
        for lin, xa, xb in zip(self.lins, fa, fb):
            na = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb).pow(2)).mean((1, 2, 3))
        return total

    def load(self, trunk: Mapping[str, torch.Tensor], linear: Mapping[str, torch.Tensor]) -> LPIPS:
        """Copy torchvision's VGG-16 ``state_dict`` (``features.*``; the classifier is not used) and
        the lpips linear layers (``linK.model.1.weight``) in; a missing or misshapen key is an error."""
        want = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        want.update({f"lin{k}.model.1.weight": lin.weight for k, lin in enumerate(self.lins)})
        given = {**{k: v for k, v in trunk.items() if k.startswith("features.")}, **linear}
        bad = [k for k, v in want.items() if k not in given or tuple(given[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"LPIPS weights lack or misshape {len(bad)} tensor(s), e.g. {bad[:3]}")
        with torch.no_grad():
            for k, v in want.items():
                v.copy_(given[k])
        return self

    @classmethod
    def from_files(cls, trunk: str | Path, linear: str | Path) -> LPIPS:
        """The released LPIPS(VGG) from its two weight files (see the module doc)."""
        return cls().load(_read(trunk), _read(linear)).eval().requires_grad_(False)


def _read(path: str | Path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def lpips_224(net: LPIPS, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The consistency losses' LPIPS: images under 256 px are first upsampled (bilinear) to
    224 x 224, as the paper does -> [B]."""
    if a.shape[-1] < 256:
        a = F.interpolate(a, size=224, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=224, mode="bilinear", align_corners=False)
    return net.to(a.device)(a, b)
