"""An inference forward for diffusers' ``ResnetBlock2D``: fewer passes over the activations.

diffusers' forward writes every intermediate to a new tensor: ``silu(norm1(x))``, the time
embedding's add (or ``h * (1 + scale) + shift``, two passes), ``silu(norm2(h))``, the residual add,
and a division by ``output_scale_factor`` that is 1 in all the consistency models' networks. On a
CPU each of these is a full pass over memory (at LSUN 256 a 33 MiB tensor). :class:`LeanResnetBlock2D`
computes the same block with the activations and the residual add in place, the scale-shift as one
``addcmul`` (rounded once, where bf16 rounded twice), and no division by 1. Measured on 2 Zen 5
cores (eager, alternating in one process): ImageNet 64 bf16 batch 1 457 -> 435 ms,
batch 8 386 -> 380 ms per image; the embedded 32 px net, 16 images in fp32, 3.4 -> 3.2 ms per
image; max abs vs fp32 9.0e-3 -> 7.0e-3 (ImageNet 64, bf16).

The block falls back to diffusers' forward whenever in-place updates would be wrong or unsupported:
with gradients enabled, in training mode, without a time embedding, with another activation than
SiLU, or with ``skip_time_act``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D

__all__ = ["LeanResnetBlock2D", "install_lean_resnets"]


class LeanResnetBlock2D(ResnetBlock2D):
    """``ResnetBlock2D`` whose inference forward works in place (same parameters, same state dict).

    ``x`` [B, C, H, W] (any layout; channels_last stays channels_last), ``temb`` [B, T] -> [B, C', H', W'].
    """

    def _lean(self) -> bool:
        return (not torch.is_grad_enabled() and not self.training and self.time_emb_proj is not None
                and not self.skip_time_act and isinstance(self.nonlinearity, torch.nn.SiLU)
                and self.time_embedding_norm in ("default", "scale_shift"))

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args: object, **kwargs: object
                ) -> torch.Tensor:
        if temb is None or not self._lean():
            return super().forward(input_tensor, temb, *args, **kwargs)
        x = input_tensor
        h = F.silu(self.norm1(x), inplace=True)
        if self.upsample is not None:
            if h.shape[0] >= 64:  # as diffusers: upsample_nearest_nhwc fails on large batches
                x, h = x.contiguous(), h.contiguous()
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        t = self.time_emb_proj(F.silu(temb))[:, :, None, None]
        if self.time_embedding_norm == "scale_shift":
            scale, shift = t.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h.add_(t))
        h = self.conv2(self.dropout(F.silu(h, inplace=True)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        h = h.add_(x)
        return h if self.output_scale_factor == 1 else h.div_(self.output_scale_factor)


def install_lean_resnets(net: torch.nn.Module) -> int:
    """Turn every plain ``ResnetBlock2D`` of ``net`` into a :class:`LeanResnetBlock2D` (its class
    only: parameters and buffers stay); returns how many."""
    blocks = [m for m in net.modules() if type(m) is ResnetBlock2D]
    for m in blocks:
        m.__class__ = LeanResnetBlock2D
    return len(blocks)
