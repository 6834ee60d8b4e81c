"""The in-place inference forward of ResnetBlock2D: diffusers' numbers (fp32), both
time-embedding modes, up/down blocks, inputs left untouched, and diffusers' forward wherever in
place would be wrong."""
import copy

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from cm_core import optimize
from cm_core.accel.lean_blocks import LeanResnetBlock2D, install_lean_resnets
from cm_core.models.checkpoints import load_denoiser
from cm_core.models.network import build_unet
from cm_core.models.registry import ArchSpec


@pytest.mark.parametrize("scale_shift", [True, False])
def test_lean_net_matches_diffusers(scale_shift):
    """A whole UNet with resblock up/down sampling, in fp32 and channels_last: within 1e-5."""
    torch.manual_seed(0)
    arch = ArchSpec(32, 32, 1, (8,), class_cond=False, use_scale_shift_norm=scale_shift, num_head_channels=32,
                    channel_mult=(1, 2, 2), num_classes=10)
    net = build_unet(arch).eval()
    lean = copy.deepcopy(net)
    n = install_lean_resnets(lean)
    assert n == sum(isinstance(m, ResnetBlock2D) for m in net.modules()) > 0
    assert all(type(m) is LeanResnetBlock2D for m in lean.modules() if isinstance(m, ResnetBlock2D))
    assert lean.state_dict().keys() == net.state_dict().keys()
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([-400.0, 10.0, 1000.0])
    with torch.no_grad():
        ref = net(x, t).sample
        x0 = x.clone()
        out = lean(x, t).sample
        lean.to(memory_format=torch.channels_last)
        out_cl = lean(x.contiguous(memory_format=torch.channels_last), t).sample
    assert torch.equal(x, x0)
    assert (out - ref).abs().max() < 1e-5 and (out_cl - ref).abs().max() < 1e-4


def test_block_keeps_its_input_and_layout():
    torch.manual_seed(1)
    blk = ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=16, groups=8,
                        time_embedding_norm="scale_shift", down=True).eval()
    lean = copy.deepcopy(blk)
    install_lean_resnets(lean)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    temb, x0 = torch.randn(2, 16), x.clone()
    with torch.no_grad():
        out = lean(x, temb)
        assert torch.allclose(out, blk(x, temb), atol=1e-5) and torch.equal(x, x0)
    assert out.shape == (2, 64, 4, 4) and out.is_contiguous(memory_format=torch.channels_last)


def test_diffusers_forward_where_in_place_is_wrong():
    """With gradients the block runs diffusers' forward (to the bit, and backward works); so it
    does with another activation than SiLU."""
    torch.manual_seed(2)
    ref = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=4, groups=4)
    blk = copy.deepcopy(ref)
    install_lean_resnets(blk)
    x, temb = torch.randn(1, 8, 4, 4, requires_grad=True), torch.randn(1, 4)
    out = blk(x, temb)
    assert torch.equal(out, ref(x, temb))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    mish = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=4, groups=4, non_linearity="mish").eval()
    ref_mish = copy.deepcopy(mish)
    install_lean_resnets(mish)
    with torch.no_grad():
        assert torch.equal(mish(x, temb), ref_mish(x, temb))


def test_only_checked_variants_get_lean_blocks():
    den = load_denoiser("cd_digits32")
    assert not any(type(m) is LeanResnetBlock2D for m in optimize(den, copy=True, channels_last=False).net.modules())
    f = optimize(den, copy=True)  # fp32 + channels_last: a checked variant
    assert any(type(m) is LeanResnetBlock2D for m in f.net.modules())
    assert not any(type(m) is LeanResnetBlock2D for m in f.exact.net.modules())
