"""The CPU fast path's attention processor: the same numbers as diffusers' SDPA
processor, chunked over heads, channels_last in and out, with the uses it does not cover handed
to diffusers."""
import copy

import pytest
import torch
import torch.nn.functional as F

from cm_core.accel import cpu_attention as ca
from cm_core.accel.fast import attention_processors
from cm_core.models.checkpoints import load_denoiser


@pytest.fixture(scope="module")
def trained():
    return load_denoiser("cd_digits32")


def _attn_modules(net):
    return [m for m in net.modules() if hasattr(m, "set_processor") and hasattr(m, "to_q")]


@pytest.mark.parametrize("heads,tokens,chunk_bytes", [(4, 64, 1 << 30), (5, 48, 48 * 48 * 4 * 2), (3, 16, 1)])
def test_chunked_attention_is_softmax_attention(heads, tokens, chunk_bytes, monkeypatch):
    """Whatever the chunk (all heads, 2 of 5, one), the result is SDPA's."""
    monkeypatch.setattr(ca, "SCORE_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, tokens, heads, 8, generator=g) for _ in range(3))
    out = ca.chunked_attention(q, k, v, 8 ** -0.5, torch.empty_like(q))
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert torch.allclose(out, ref, atol=1e-5)
    assert 1 <= ca.score_chunk(tokens, 4, heads) <= heads


def test_processor_matches_diffusers_on_the_trained_net(trained):
    """fp32: the whole network's output equals SDPA's to 1e-5 (1e-4 channels_last), and
    every attention module got the processor."""
    net = copy.deepcopy(trained.net)
    assert ca.install_cpu_attention(net) == len(_attn_modules(net)) > 0
    assert attention_processors(net) == {"CPUAttnProcessor"}
    g = torch.Generator().manual_seed(1)
    x, t, lab = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([-500.0, 0.0, 900.0]), torch.tensor([0, 4, 9])
    with torch.no_grad():
        ref = trained.net(x, t, class_labels=lab).sample
        out = net(x, t, class_labels=lab).sample
        net.to(memory_format=torch.channels_last)
        out_cl = net(x.contiguous(memory_format=torch.channels_last), t, class_labels=lab).sample
    assert (out - ref).abs().max() < 1e-5 and (out_cl - ref).abs().max() < 1e-4  # cl: other conv kernels


def test_block_output_is_channels_last_and_bf16_close(trained):
    attn = _attn_modules(trained.net)[0]
    c = attn.to_q.in_features
    x = torch.randn(2, c, 8, 8).contiguous(memory_format=torch.channels_last)
    proc = ca.CPUAttnProcessor()
    with torch.no_grad():
        ref = attn.processor(attn, x)
        out = proc(attn, x)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(out, ref, atol=1e-5)
        a16 = copy.deepcopy(attn).to(torch.bfloat16)
        out16 = proc(a16, x.to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16 and (out16.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_other_uses_go_to_diffusers(trained):
    """Token inputs (3-D) and masks are not what the UNets use: diffusers' processor serves them."""
    attn = _attn_modules(trained.net)[0]
    c = attn.to_q.in_features
    proc = ca.CPUAttnProcessor()
    calls = []
    real = proc.fallback
    proc.fallback = lambda *a: calls.append(a) or real(*a)
    tokens = torch.randn(2, 16, c)
    with torch.no_grad():
        out = proc(attn, tokens)
        proc(attn, torch.randn(2, c, 4, 4), attention_mask=torch.zeros(2, 16))
    assert len(calls) == 2 and out.shape == tokens.shape


def test_a_compiled_trace_gets_diffusers_attention(trained, monkeypatch):
    attn = _attn_modules(trained.net)[0]
    proc, calls = ca.CPUAttnProcessor(), []
    proc.fallback = lambda *a: calls.append(a) or a[1]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    proc(attn, torch.randn(1, attn.to_q.in_features, 4, 4))
    assert len(calls) == 1
