"""LPIPS(VGG), the distance of the LPIPS losses, runs for real: the released architecture with a
random trunk and the shipped linear layers (the 528 MB ImageNet trunk is not needed for this)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cm_core.train import TrainConfig, losses, run_training
from cm_core.train.perceptual import CHANNELS, LPIPS, lpips_224


@pytest.fixture(scope="module")
def net() -> LPIPS:
    """Random VGG-16 trunk (torch's default init, seeded) and the released linear layers."""
    from safetensors.torch import load_file
    torch.manual_seed(0)
    random_trunk = {f"features.{k}": v for k, v in LPIPS().features.state_dict().items()}
    return LPIPS().load(random_trunk, load_file(str(losses.LINEAR_WEIGHTS))).eval().requires_grad_(False)


def test_the_shipped_linear_layers_are_the_released_ones():
    from safetensors.torch import load_file
    lin = load_file(str(losses.LINEAR_WEIGHTS))
    assert [tuple(lin[f"lin{k}.model.1.weight"].shape) for k in range(5)] == [(1, c, 1, 1) for c in CHANNELS]
    assert all((w >= 0).all() for w in lin.values())  # LPIPS v0.1 keeps them non-negative
    with pytest.raises(ValueError, match="lack or misshape"):
        LPIPS().load({}, lin)


def test_lpips_is_a_distance_between_images(net):
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    d = lpips_224(net, a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.equal(lpips_224(net, a, a), torch.zeros(2))
    assert torch.allclose(d, lpips_224(net, b, a), rtol=1e-5)
    near = lpips_224(net, a, a + 0.01 * torch.randn(a.shape, generator=g))
    assert (near < d).all()  # a small change is nearer than another image
    one = lpips_224(net, a[1:2], b[1:2])
    assert torch.allclose(one, d[1:2], rtol=1e-4)  # per image: the batch does not matter


def test_lpips_gradients_reach_the_first_image(net):
    a = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    lpips_224(net, a, torch.zeros(2, 3, 32, 32)).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_consistency_training_with_the_lpips_loss_runs(tmp_path: Path, net, monkeypatch):
    monkeypatch.setattr(losses, "_LPIPS", [net])
    cfg = TrainConfig(method="ct", loss="lpips", out=str(tmp_path / "ct"), steps=1, data="digits", image_size=8,
                      num_channels=32, channel_mult="1,1", attention_resolutions="", batch_size=2,
                      device="cpu")
    res = run_training(cfg, progress=False)
    assert (tmp_path / "ct" / "model.safetensors").is_file()
    assert len(res["losses"]) == 1 and torch.isfinite(torch.tensor(res["losses"])).all() and res["losses"][0] > 0


def test_without_the_trunk_weights_the_error_names_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(losses, "_LPIPS", [])
    with pytest.raises(losses.LpipsUnavailable) as e:
        losses.get_distance("lpips")
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in str(e.value)
    assert losses.VGG16_URL in str(e.value)
    from cm_core.cli import main
    out = CliRunner().invoke(main, ["train", "ct", "--out", str(tmp_path / "x"), "--loss", "lpips",
                                    "--steps", "1", "--quiet"])
    assert out.exit_code != 0 and "LPIPS is unavailable" in out.output
