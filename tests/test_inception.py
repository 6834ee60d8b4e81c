"""The FID Inception v3 with its real architecture and random weights: feature shapes, the TF
graph's input handling, batch independence, and safe weight loading."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cm_core.evaluation.inception import (
    NUM_LOGITS,
    POOL_DIM,
    SPATIAL_DIM,
    InceptionFeatures,
    load_inception,
    tf1_resize_bilinear,
)


def random_inception(seed: int = 0) -> InceptionFeatures:
    """Random weights with batch-norm statistics that keep activations in a sane range."""
    torch.manual_seed(seed)
    net = InceptionFeatures()
    sd = net.state_dict()
    for k, v in sd.items():
        if v.dtype.is_floating_point:
            v.uniform_(0.5, 1.5) if "running_var" in k else v.normal_(0, 0.1)
    net.load_state_dict(sd)
    return net


@pytest.fixture(scope="module")
def net() -> InceptionFeatures:
    return random_inception()


def test_tf_resize_samples_at_i_times_scale_without_the_half_pixel_offset():
    ramp = torch.arange(64, dtype=torch.float32).expand(1, 1, 64, 64)  # value = column index
    out = tf1_resize_bilinear(ramp)[0, 0, 0]
    want = torch.clamp(torch.arange(299) * (64 / 299), max=63)  # TF1 align_corners=False, clamped
    torch.testing.assert_close(out, want, rtol=0, atol=1e-4)
    half_pixel = F.interpolate(ramp, size=(299, 299), mode="bilinear", align_corners=False)[0, 0, 0]
    assert (half_pixel - out).abs().max() > 0.3  # what torch's own resize would feed instead


def test_feature_shapes_and_uint8_nhwc_goes_in_as_the_graph_expects(net):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)  # an .npz's arr_0
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        pool, spatial, logits = net(x)
        as_float = net(x.float())  # float values in [0, 255], as the evaluator feeds the graph
    assert pool.shape == (3, POOL_DIM) and spatial.shape == (3, SPATIAL_DIM) and logits.shape == (3, NUM_LOGITS)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in (pool, spatial, logits))
    for a, b in zip((pool, spatial, logits), as_float):
        assert torch.equal(a, b)
    assert (pool >= 0).all() and pool.std() > 0  # mean of ReLU activations, not a constant


def test_spatial_features_are_mixed_6_conv_first_7_channels_in_hwc_order(net):
    seen = {}
    hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    try:
        with torch.no_grad():
            _, spatial, _ = net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    finally:
        hook.remove()
    assert seen["o"].shape == (2, 192, 17, 17)
    torch.testing.assert_close(spatial, seen["o"][:, :7].permute(0, 2, 3, 1).reshape(2, -1))


def test_each_image_features_do_not_depend_on_its_batch(net):
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        batch = net(x)
        alone = net(x[2:3])
    for a, b in zip(batch, alone):
        torch.testing.assert_close(a[2:3], b, rtol=1e-5, atol=1e-5)


def test_weights_load_as_a_state_dict_and_nothing_else(net, tmp_path):
    good = tmp_path / "w.pth"
    torch.save(net.state_dict(), good)
    loaded = load_inception(good)
    assert torch.equal(loaded.fc.weight, net.fc.weight)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(type("Evil", (), {"__reduce__": lambda self: (print, ("pwned",))})()))
    with pytest.raises(ValueError, match="fetch --ref inception"):
        load_inception(evil)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match="not the FID Inception"):
        load_inception(wrong)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable"):
        load_inception(truncated)
