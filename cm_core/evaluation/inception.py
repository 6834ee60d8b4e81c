"""The FID Inception v3 (TensorFlow graph of 2015-12-05) in PyTorch: the network of the paper's numbers.

OpenAI's ``evaluations/evaluator.py`` feeds float images in [0, 255] (NHWC) to that graph, which
resizes them to 299x299 with TF1's ``ResizeBilinear`` (``align_corners=False``), maps them to
``(x - 128) / 128`` and reads ``pool_3`` (2048-d, for FID, IS and precision/recall), the first 7
channels of ``mixed_6/conv`` (17x17x7 = 2023-d, flattened in HWC order, for sFID), and for the
Inception Score the softmax of ``pool_3 @ W`` with ``W`` the final layer's weights, without its bias.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (Apache-2.0; it in turn adapts
pytorch-fid), which matches the TF graph to about 1e-6 relative FID: the same modules and
parameter names, so its converted weights ``weights-inception-2015-12-05-6726825d.pth`` (a plain
state dict) load here unchanged. It is restated rather than imported because the package imports
torchvision at import time, reads its weights with ``torch.load(weights_only=False)`` and does not
expose ``mixed_6/conv``; here the weights load with ``weights_only=True`` and the spatial tap is
``Mixed_6d.branch1x1`` (TF's ``mixed_6/conv``, after its ReLU). With the same random weights,
this module's pool_3 and logits equal torch-fidelity 0.4.0's bit for bit (max abs difference 0.0
on a CPU), and so does its resize.

Alternatives measured: pytorch-fid resizes with ``F.interpolate`` (half-pixel centres), which
feeds the network different pixels than the graph does: 3.2 grey levels mean and 38 max absolute
difference on 32px digits upsampled to 299 (33 mean on random 64px images), so its FIDs differ
from the paper's by design. clean-fid's ``legacy_tensorflow`` mode and EDM's
``inception-2015-12-05.pkl`` load TorchScript or pickled code, which this project never loads.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 299  # the graph's input resolution
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # of mixed_6/conv's 192, as the evaluator keeps
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
NUM_LOGITS = 1008


def tf1_resize_bilinear(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """TF1 ``ResizeBilinear(align_corners=False)`` of float images [N, C, H, W] to ``size`` x ``size``.

    Output pixel ``i`` samples input coordinate ``i * in / out`` (no half-pixel offset, unlike
    ``F.interpolate``), clamped at the last row and column: bit-exact with TF on a CPU.
    """
    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.to(pos.dtype)

    (ylo, yhi, dy), (xlo, xhi, dx) = axis(x.shape[2]), axis(x.shape[3])
    top, bottom = x[:, :, ylo], x[:, :, yhi]
    top = top[..., xlo] + (top[..., xhi] - top[..., xlo]) * dx
    bottom = bottom[..., xlo] + (bottom[..., xhi] - bottom[..., xlo]) * dx
    return top + (bottom - top) * dy[:, None]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3 average pool, which leaves the zero padding out of the average."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """The last two blocks; the graph's final block pools its side branch with a max, not a mean."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class InceptionFeatures(nn.Module):
    """Inception v3 as in the FID graph; ``forward(images)`` -> (pool [N, 2048], spatial [N, 2023],
    logits [N, 1008]) in float32, where ``images`` are [N, 3, H, W] uint8, or float in [0, 255],
    at any resolution (resized to 299 as the graph does). ``logits`` has no bias, as the
    evaluator's softmax. Each image's features depend on that image only (eval-mode batch norm).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = tf1_resize_bilinear(images.to(torch.float32))
        x = (x - 128) / 128
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))
        return pool, spatial, pool @ self.fc.weight.T


def load_inception(path: str | Path, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The network with the converted TF weights at ``path`` (a state dict, read with
    ``weights_only=True``); raises ``ValueError`` naming the problem for a file that is not one."""
    from ..models.checkpoints import first_line
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, or pickled code
        raise ValueError(f"{path}: not a readable Inception state dict ({first_line(e)}); delete it and "
                         "run: python -m cm_core fetch --ref inception") from None
    net = InceptionFeatures()
    try:
        net.load_state_dict(sd)
    except (RuntimeError, AttributeError, TypeError) as e:
        raise ValueError(f"{path}: not the FID Inception v3 weights ({first_line(e)}); fetch them with: "
                         "python -m cm_core fetch --ref inception") from None
    return net.to(device)
