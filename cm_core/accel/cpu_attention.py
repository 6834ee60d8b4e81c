"""Self-attention for the CPU fast path: channels_last in, channels_last out, chunked over heads.

diffusers' ``AttnProcessor2_0`` calls ``F.scaled_dot_product_attention``, whose CPU kernel (flash
attention) runs the UNets' attention shapes at 85-150 GFLOP/s in bf16 on a 2-core Zen 5, while a
bf16 ``bmm`` - softmax - ``bmm`` over one or two heads at a time, whose scores stay in the cache,
runs at 280-330 GFLOP/s (``bench`` numbers: the ImageNet 64 network at batch 8 spends
23% of its time in that kernel). The processor also keeps the layout: the attention block's input
[B, C, H, W] in channels_last is the token matrix [B, H*W, C] as a view, and its output is written
back as a channels_last view, where diffusers' processor reshapes through ``transpose`` copies.

Numerics: scores are rounded to the network's dtype before the softmax (computed in fp32 inside
``torch.softmax``); the fast path's self-check against fp32 (:mod:`cm_core.accel.verify`) bounds
the effect on final images. Only used where it measured faster: CPU, bf16 (fp32 ``bmm`` on AMD
CPUs goes through a slow BLAS path, so fp32 keeps diffusers' processor).
"""
from __future__ import annotations

import torch

__all__ = ["CPUAttnProcessor", "attention_processors", "install_cpu_attention", "score_chunk"]

SCORE_BYTES = 2 << 20  # scores per chunk: ~2 MiB (one head of 1024 tokens in bf16) stays in L2/L3


def score_chunk(tokens: int, itemsize: int, heads: int) -> int:
    """How many heads of ``tokens`` x ``tokens`` scores go in one chunk (1 to ``heads``)."""
    return max(1, min(heads, SCORE_BYTES // max(1, tokens * tokens * itemsize)))


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      out: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) v per image and head, ``chunk`` heads at a time.

    q, k, v: [B, N, heads, d] (views of the fused projections), out: [B, N, heads, d], written in
    place and returned.
    """
    b, n, heads, _ = q.shape
    c = score_chunk(n, q.element_size(), heads)
    for i in range(b):
        for h in range(0, heads, c):
            qi = q[i, :, h:h + c].transpose(0, 1) * scale           # [c, N, d]
            ki = k[i, :, h:h + c].permute(1, 2, 0)                  # [c, d, N]
            p = torch.softmax(torch.bmm(qi, ki), dim=-1)            # [c, N, N]
            out[i, :, h:h + c] = torch.bmm(p, v[i, :, h:h + c].transpose(0, 1)).transpose(0, 1)
    return out


class CPUAttnProcessor:
    """A diffusers attention processor for the UNets' spatial self-attention on CPU.

    Input [B, C, H, W] (any layout; fastest channels_last), output the same shape in
    channels_last: ``group_norm -> q, k, v -> softmax(q k^T / sqrt(d)) v -> to_out -> + residual,
    / rescale_output_factor`` (as ``AttnProcessor2_0``). Other uses (cross-attention, masks,
    spatial norms, token inputs) go to ``AttnProcessor2_0``, and so does a ``torch.compile`` trace
    (Inductor's attention pattern rewrite fails on the chunked loop; compiled graphs get SDPA).
    """

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: object, **kwargs: object) -> torch.Tensor:
        if (hidden_states.ndim != 4 or encoder_hidden_states is not None or attention_mask is not None
                or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None
                or torch.compiler.is_compiling()):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        b, c, hgt, wid = hidden_states.shape
        x = attn.group_norm(hidden_states) if attn.group_norm is not None else hidden_states
        tokens = x.permute(0, 2, 3, 1).reshape(b, hgt * wid, c)    # a view when channels_last
        q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        heads = attn.heads
        d = q.shape[-1] // heads
        shape = (b, hgt * wid, heads, d)
        att = chunked_attention(q.view(shape), k.view(shape), v.view(shape), attn.scale,
                                torch.empty(shape, dtype=q.dtype, device=q.device))
        y = attn.to_out[1](attn.to_out[0](att.view(b, hgt * wid, heads * d)))
        y = y.view(b, hgt, wid, -1).permute(0, 3, 1, 2)             # channels_last [B, C, H, W]
        if attn.residual_connection:
            y = y + hidden_states
        if attn.rescale_output_factor != 1:
            y = y / attn.rescale_output_factor
        return y


def install_cpu_attention(net: torch.nn.Module) -> int:
    """Give every diffusers ``Attention`` module of ``net`` a :class:`CPUAttnProcessor`; returns
    how many were set (0 for a network without them)."""
    mods = [m for m in net.modules() if hasattr(m, "set_processor") and hasattr(m, "to_q")]
    for m in mods:
        m.set_processor(CPUAttnProcessor())
    return len(mods)


def attention_processors(net: torch.nn.Module) -> set[str]:
    """Names of the attention processors in ``net`` (``AttnProcessor2_0`` = PyTorch SDPA, which
    dispatches to flash / memory-efficient kernels on CUDA in half precision)."""
    return {type(m.processor).__name__ for m in net.modules() if hasattr(m, "processor")}
