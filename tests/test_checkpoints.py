"""Loading: the real key set, diffusers folders, hostile and broken files, clear errors."""
import json
import os
import pickle

import pytest
import torch
from diffusers import UNet2DModel

import cm_core
from cm_core.models.checkpoints import CheckpointError, load_denoiser
from cm_core.models.network import build_unet, convert_state_dict, unet_config
from cm_core.models.registry import IMAGENET64, LSUN256, REGISTRY, ArchSpec, UnknownModelError, get_spec

TINY = ArchSpec(32, 32, 1, (16, 8), class_cond=True, use_scale_shift_norm=True, num_head_channels=32,
                channel_mult=(1, 2, 2), num_classes=10)


@pytest.mark.parametrize("arch_name,arch,params", [("imagenet64", IMAGENET64, 295_899_267),
                                                   ("lsun256", LSUN256, 526_304_771)])
def test_full_size_key_set_converts(golden, arch_name, arch, params):
    """Every key of the released files maps onto the runtime model: none missing, none unexpected."""
    manifest = json.loads((golden / "real_state_dict_manifest.json").read_text())[arch_name]
    assert ArchSpec.from_flags(manifest["flags"]) == arch
    sd = {k: torch.empty(shape, device="meta") for k, shape in manifest["keys"].items()}
    assert sum(t.numel() for t in sd.values()) == manifest["params"] == params
    converted = convert_state_dict(sd, arch)
    with torch.device("meta"):
        net = UNet2DModel(**unet_config(arch))
    missing, unexpected = net.load_state_dict(converted, strict=False, assign=True)
    assert not missing and not unexpected
    assert sum(p.numel() for p in net.parameters()) == params
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert all(shapes[k] == tuple(v.shape) for k, v in converted.items())


def test_diffusers_save_pretrained_loads_like_hub(tmp_path):
    """A diffusers folder (model-only and pipeline layout) loads through load_denoiser."""
    torch.manual_seed(0)
    net = build_unet(TINY)
    net.save_pretrained(tmp_path / "model")
    pipe = tmp_path / "pipe"
    net.save_pretrained(pipe / "unet")
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "CMStochasticIterativeScheduler", "sigma_min": 0.002, "sigma_max": 80.0}))
    x, s, y = torch.randn(2, 3, 32, 32), torch.tensor([1.0, 5.0]), torch.tensor([1, 2])
    ref = cm_core.Denoiser(net, "cm", num_classes=10)(x, s, y)
    for folder in (tmp_path / "model", pipe):
        den = load_denoiser(folder, device="cpu")
        with torch.no_grad():
            assert torch.allclose(den(x, s, y), ref, atol=1e-6)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Hub repo"):
        load_denoiser("someone/not-a-cached-repo", device="cpu")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cm_pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "cd_imagenet64_l2.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "evil": _Evil()}, path)
    if os.path.exists("/tmp/cm_pwned"):
        os.remove("/tmp/cm_pwned")
    with pytest.raises(CheckpointError, match="pickled objects other than tensors"):
        load_denoiser(path, device="cpu")
    assert not os.path.exists("/tmp/cm_pwned")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the file is a plain pickle on purpose
def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    with pytest.raises(CheckpointError):
        load_denoiser(path, arch=TINY, device="cpu")


def test_truncated_pt_names_file_and_fix(tmp_path):
    sd = build_unet(TINY).state_dict()
    path = tmp_path / "t.pt"
    torch.save(sd, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=str(path)):
        load_denoiser(path, arch=TINY, device="cpu")


def test_lying_safetensors_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_denoiser(path, arch=TINY, device="cpu")


def test_wrong_architecture_is_clear(golden, tmp_path):
    import shutil
    shutil.copy(golden / "imagenet64_tiny_cd.pt", tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="architecture"):
        load_denoiser(tmp_path / "m.pt", arch=TINY, device="cpu")


def test_pt_without_arch_asks_for_it(golden, tmp_path):
    import shutil
    shutil.copy(golden / "imagenet64_tiny_cd.pt", tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="arch"):
        load_denoiser(tmp_path / "m.pt", device="cpu")


def test_missing_registry_file_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="fetch_checkpoints.sh cd_imagenet64_lpips"):
        load_denoiser("cd_imagenet64_lpips", device="cpu")


def test_registry_file_in_checkpoint_dir_loads(golden, tmp_path, monkeypatch):
    """A released name resolves to <CM_CHECKPOINT_DIR>/<name>.pt with the registry's arch."""
    import shutil
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path))
    shutil.copy(golden / "imagenet64_tiny_cd.pt", tmp_path / "cd_imagenet64_l2.pt")
    with pytest.raises(CheckpointError, match="do not fit this architecture|shapes"):
        load_denoiser("cd_imagenet64_l2", device="cpu")  # tiny weights vs full-size registry arch


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as e:
        get_spec("cd_imagenet128")
    assert "cd_imagenet64_lpips" in str(e.value) and "ct_cat256" in str(e.value)


def test_registry_has_the_twelve_released_models():
    released = [s for s in REGISTRY.values() if not s.embedded]
    assert len(released) == 12
    for s in released:
        assert s.url == f"https://openaipublic.blob.core.windows.net/consistency/{s.name}.pt"
        assert (s.hub_repo is None) == (s.kind == "edm")
        assert (s.sigma_min, s.sigma_max, s.sigma_data) == (0.002, 80.0, 0.5)
    assert get_spec("ct_imagenet64").ts == (0, 106, 200) and get_spec("ct_imagenet64").grid_size == 201
    assert get_spec("cd_bedroom256_l2").ts == (0, 18, 39)
    assert get_spec("ct_cat256").ts == (0, 62, 150) and get_spec("ct_cat256").grid_size == 151
    assert "bedroom" in get_spec("cd_cat256_lpips").note
    assert get_spec("cd_imagenet64_lpips").arch == IMAGENET64 and get_spec("ct_bedroom256").arch == LSUN256


@pytest.mark.slow
def test_full_size_random_weights_load_through_pt(golden, tmp_path):
    """Slow (writes a 1.2 GB file): real random tensors from the manifest, saved as an original .pt."""
    manifest = json.loads((golden / "real_state_dict_manifest.json").read_text())["imagenet64"]
    sd = {k: torch.randn(shape) * 0.01 for k, shape in manifest["keys"].items()}
    torch.save(sd, tmp_path / "cd_imagenet64_l2.pt")
    den = load_denoiser(tmp_path / "cd_imagenet64_l2.pt", arch=IMAGENET64, device="cpu")
    assert sum(p.numel() for p in den.parameters()) == 295_899_267
