"""Every preset against the paper's Table 3 (Song et al. 2023, Appendix C), written out here
rather than read back from the code; the CLI lists presets and lets flags override them."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cm_core.train.presets import PRESETS, preset_fields

# Table 3, columns ImageNet 64x64 (CD, CT) and LSUN 256x256 (CD, CT; bedroom and cat):
# learning rate, batch size, mu (CD), mu0 (CT), s0, s1 (CT), N (CD), EMA decay rate,
# training iterations, mixed precision (FP16), dropout probability.
TABLE3 = {
    ("imagenet64", "cd"): dict(lr=8e-6, batch_size=2048, target_ema=0.95, num_scales=40,
                               ema=0.999943, steps=600_000, fp16=True, dropout=0.0),
    ("imagenet64", "ct"): dict(lr=8e-6, batch_size=2048, start_ema=0.95, start_scales=2,
                               end_scales=200, ema=0.999943, steps=800_000, fp16=True, dropout=0.0),
    ("lsun256", "cd"): dict(lr=1e-5, batch_size=2048, target_ema=0.95, num_scales=40,
                            ema=0.999943, steps=600_000, fp16=True, dropout=0.0),
    ("lsun256", "ct"): dict(lr=1e-5, batch_size=2048, start_ema=0.95, start_scales=2,
                            end_scales=150, ema=0.999943, steps=1_000_000, fp16=True, dropout=0.0),
}
# Architectures of the released models (the original launch.sh flags).
ARCH = {
    "imagenet64": dict(image_size=64, num_channels=192, num_res_blocks=3, channel_mult="1,2,3,4",
                       attention_resolutions="32,16,8", num_head_channels=64, class_cond=True,
                       use_scale_shift_norm=True, num_classes=1000),
    "lsun256": dict(image_size=256, num_channels=256, num_res_blocks=2, channel_mult="1,1,2,2,4,4",
                    attention_resolutions="32,16,8", num_head_channels=64, class_cond=False,
                    use_scale_shift_norm=False),
}
RELEASED = {"edm_imagenet64": ("imagenet64", "edm", None),
            "cd_imagenet64_l2": ("imagenet64", "cd", "l2"),
            "cd_imagenet64_lpips": ("imagenet64", "cd", "lpips"),
            "ct_imagenet64": ("imagenet64", "ct", "lpips")}
for _cat in ("bedroom", "cat"):
    RELEASED.update({f"edm_{_cat}256": ("lsun256", "edm", None),
                     f"cd_{_cat}256_l2": ("lsun256", "cd", "l2"),
                     f"cd_{_cat}256_lpips": ("lsun256", "cd", "lpips"),
                     f"ct_{_cat}256": ("lsun256", "ct", "lpips")})
# EDM teachers (launch.sh edm_train.py; not in Table 3): batch, lr, dropout.
EDM = {"imagenet64": dict(batch_size=4096, lr=1e-4, dropout=0.1),
       "lsun256": dict(batch_size=256, lr=1e-4, dropout=0.1)}


# iCT (Song & Dhariwal 2023): what the paper sets for its CIFAR-10 and ImageNet 64 runs.
ICT = {"ict_cifar10": dict(batch_size=1024, steps=400_000, dropout=0.3, image_size=32, class_cond=False,
                           lr=1e-4, optimizer="radam", ema=0.99993),
       "ict_imagenet64": dict(batch_size=4096, steps=800_000, dropout=0.2, **ARCH["imagenet64"])}


def test_every_released_model_has_a_preset() -> None:
    assert set(PRESETS) == set(RELEASED) | set(ICT)


@pytest.mark.parametrize("name", sorted(ICT))
def test_ict_presets_follow_the_paper_and_say_what_is_ours(name: str) -> None:
    """The curriculum and noise-level law of iCT, its dropout, batch and iterations; the note
    names the values the paper does not fix here, and the CIFAR-10 network (NCSN++ in the paper)."""
    from cm_core.train import TrainConfig
    from cm_core.train.ict import doubling_scales
    p = preset_fields(name)
    assert (p["method"], p["loss"], p["ict_p_mean"], p["ict_p_std"]) == ("ict", "pseudo_huber", -1.1, 2.0)
    assert (p["ict_start_scales"], p["ict_end_scales"]) == (10, 1280)
    for k, v in ICT[name].items():
        assert p[k] == v, (name, k)
    cfg = TrainConfig(**p)
    assert doubling_scales(0, cfg) == 11 and doubling_scales(cfg.steps - 1, cfg) == 1281
    note = PRESETS[name]["note"]
    assert "ours or unchecked" in note and "learning rate" in note
    assert ("NCSN++" in note) == (name == "ict_cifar10")


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_preset_matches_table3_and_launch_script(name: str) -> None:
    data, method, loss = RELEASED[name]
    p = preset_fields(name)
    assert p["method"] == method and p["preset"] == name
    for k, v in ARCH[data].items():
        assert p[k] == v, (name, k)
    if method == "edm":
        for k, v in EDM[data].items():
            assert p[k] == pytest.approx(v), (name, k)
        return
    table = TABLE3[(data, method)]
    assert p["loss"] == loss
    for k, v in table.items():
        if k == "fp16":
            assert (p["precision"] == "fp16") == v
        elif k == "ema":
            assert p["ema"] == pytest.approx(v, abs=1e-6)
        else:
            assert p[k] == pytest.approx(v), (name, k)
    # the original's optimisation: RAdam, no warm-up, no clipping, fixed-rate EMA
    assert (p["optimizer"], p["warmup"], p["grad_clip"], p["ema_warmup"]) == ("radam", 0, 0.0, False)
    if method == "cd":
        assert p["teacher"] == f"edm_{name.split('_')[1]}_ema" and p["init_from_teacher"]


def test_list_presets_and_override(tmp_path: Path) -> None:
    from cm_core.cli import main
    listed = CliRunner().invoke(main, ["train", "--list-presets"])
    assert listed.exit_code == 0 and all(n in listed.output for n in PRESETS)
    # a preset with tiny architecture overrides trains end to end (teacher: an EDM run here)
    tiny = ["--image-size", "8", "--num-channels", "32", "--channel-mult", "1,1",
            "--attention-resolutions", "", "--num-head-channels", "32", "--num-classes", "10",
            "--batch-size", "4", "--steps", "2", "--device", "cpu", "--threads", "1", "--quiet"]
    edm = CliRunner().invoke(main, ["train", "--preset", "edm_imagenet64", "--data", "digits",
                                    "--out", str(tmp_path / "edm"), "--precision", "bf16", *tiny])
    assert edm.exit_code == 0, edm.output
    cd = CliRunner().invoke(main, ["train", "--preset", "cd_imagenet64_l2", "--out",
                                   str(tmp_path / "cd"), "--teacher",
                                   str(tmp_path / "edm" / "model.safetensors"), "--lr", "1e-3", *tiny])
    assert cd.exit_code == 0, cd.output
    from cm_core.train.state import stored_config
    cfg = stored_config(tmp_path / "cd")
    assert cfg is not None and cfg.preset == "cd_imagenet64_l2"
    assert (cfg.lr, cfg.batch_size, cfg.num_scales, cfg.optimizer) == (1e-3, 4, 40, "radam")
    wrong = CliRunner().invoke(main, ["train", "edm", "--preset", "ct_imagenet64", "--out", "x"])
    assert wrong.exit_code != 0 and "ct recipe" in wrong.output
    unknown = CliRunner().invoke(main, ["train", "--preset", "nope", "--out", "x"])
    assert unknown.exit_code != 0 and "cd_imagenet64_lpips" in unknown.output
