"""The paper's training recipes for every released model (``--preset NAME``).

Sources: Song et al. 2023, Table 3 (CD/CT: learning rate, batch, mu, mu0, s0, s1, N, EMA decay,
iterations, fp16, dropout) and OpenAI's ``scripts/launch.sh`` / ``cm/script_util.py``
(architecture, loss, the EDM teachers, the extra EMA rates, RAdam, no warm-up, no clipping,
teacher initialisation of CD students). Where the launch script disagrees with Table 3 the
preset follows the table and its ``note`` names the script's value. Every field can still be
overridden on the command line (``--batch-size 256`` etc.).

The iCT presets (Song & Dhariwal 2023, Sec. 3-6) take from that paper the lognormal noise levels
(P_mean -1.1, P_std 2.0), the doubling curriculum (s0 10, s1 1280 over the run's iterations),
pseudo-Huber with c = 0.00054 sqrt(d), no EMA target, dropout (0.3 CIFAR-10, 0.2 ImageNet 64),
batch and iterations; each ``note`` names what is ours (CIFAR-10's network: the paper uses
NCSN++, we train the ADM UNet at 32x32, which is what this package builds; optimiser details not
given in the main text follow the original CM recipe and are marked so).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from .config import TrainConfig

_EMA = 0.9999432189950708  # Table 3's 0.999943; launch.sh's third --ema_rate
_ORIGINAL = dict(optimizer="radam", weight_decay=0.0, warmup=0, grad_clip=0.0, ema_warmup=False,
                 precision="fp16", rng="position", sigma_min=0.002, sigma_max=80.0, rho=7.0,
                 ema=_EMA, dropout=0.0)
_IMAGENET64 = dict(image_size=64, num_channels=192, num_res_blocks=3, channel_mult="1,2,3,4",
                   attention_resolutions="32,16,8", num_head_channels=64, class_cond=True,
                   num_classes=1000, use_scale_shift_norm=True, ema_rates="0.999,0.9999")
_LSUN256 = dict(image_size=256, num_channels=256, num_res_blocks=2, channel_mult="1,1,2,2,4,4",
                attention_resolutions="32,16,8", num_head_channels=64, class_cond=False,
                num_classes=1000, use_scale_shift_norm=False, ema_rates="0.9999,0.99994",
                grad_checkpoint=True)
_EDM = dict(method="edm", lr=1e-4, dropout=0.1, p_mean=-1.2, p_std=1.2, steps=600_000)
_EDM_NOTE = ("EDM teacher (launch.sh edm_train.py); Table 3 covers CD/CT only and the script "
             "runs until stopped: steps=600k is our choice")
_CD = dict(method="cd", num_scales=40, target_ema=0.95, init_from_teacher=True, steps=600_000)
_CT = dict(method="ct", loss="lpips", start_scales=2, start_ema=0.95)


_ICT = dict(method="ict", loss="pseudo_huber", ict_p_mean=-1.1, ict_p_std=2.0, ict_start_scales=10,
            ict_end_scales=1280, lr=1e-4)
_ICT_NOTE = ("iCT; ours or unchecked (the paper's appendix was not at hand): learning rate 1e-4, "
             "RAdam without warm-up, fp16 and the EMA decay of the released CM models")
_ICT_CIFAR10_NOTE = ("iCT; learning rate 1e-4, RAdam, batch 1024 and EMA 0.99993 as a published "
                     "summary of the paper gives them for CIFAR-10; ours or unchecked (the paper's "
                     "appendix was not at hand): no warm-up, fp16")
_CIFAR10 = dict(image_size=32, num_channels=128, num_res_blocks=4, channel_mult="1,2,2,2",
                attention_resolutions="16", num_head_channels=64, class_cond=False,
                num_classes=10, use_scale_shift_norm=True, ema_rates="0.9999")


def _imagenet(**kw: Any) -> dict[str, Any]:
    return {**_ORIGINAL, **_IMAGENET64, **kw}


def _lsun(**kw: Any) -> dict[str, Any]:
    return {**_ORIGINAL, **_LSUN256, **kw}


def _lsun_set(cat: str) -> dict[str, dict[str, Any]]:
    teacher = f"edm_{cat}256_ema"
    bs_note = "launch.sh: --global_batch_size 256"
    return {
        f"edm_{cat}256": _lsun(**_EDM, batch_size=256, ema_rates="0.999,0.9999", note=_EDM_NOTE),
        f"cd_{cat}256_l2": _lsun(**_CD, loss="l2", lr=1e-5, batch_size=2048, teacher=teacher,
                                 note=bs_note),
        f"cd_{cat}256_lpips": _lsun(**_CD, loss="lpips", lr=1e-5, batch_size=2048,
                                    teacher=teacher, note=bs_note),
        f"ct_{cat}256": _lsun(**_CT, end_scales=150, lr=1e-5, batch_size=2048, steps=1_000_000,
                              note=bs_note + ", --lr 5e-5; it also passes the EDM teacher, "
                              "which copies its weights into the student (use --init for that)"),
    }


PRESETS: dict[str, dict[str, Any]] = {
    "edm_imagenet64": _imagenet(**_EDM, batch_size=4096, note=_EDM_NOTE),
    "cd_imagenet64_l2": _imagenet(**_CD, loss="l2", lr=8e-6, batch_size=2048,
                                  teacher="edm_imagenet64_ema", note="as launch.sh"),
    "cd_imagenet64_lpips": _imagenet(**_CD, loss="lpips", lr=8e-6, batch_size=2048,
                                     teacher="edm_imagenet64_ema", note="as launch.sh"),
    "ct_imagenet64": _imagenet(**_CT, end_scales=200, lr=8e-6, batch_size=2048, steps=800_000,
                               note="launch.sh: --lr 1e-4; it also passes the EDM teacher, which "
                               "copies its weights into the student (use --init for that)"),
    **_lsun_set("bedroom"),
    **_lsun_set("cat"),
    "ict_imagenet64": _imagenet(**_ICT, batch_size=4096, steps=800_000, dropout=0.2, note=_ICT_NOTE),
    "ict_cifar10": {**_ORIGINAL, **_CIFAR10, **_ICT, "batch_size": 1024, "steps": 400_000, "dropout": 0.3,
                    "ema": 0.99993,
                    "note": _ICT_CIFAR10_NOTE + "; the network: the paper trains NCSN++, this is an ADM UNet "
                    "of 68M parameters at 32x32 (our choice, DDPM's CIFAR-10 widths)"},
}
_FIELDS = {f.name for f in fields(TrainConfig)}


def preset_fields(name: str) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of preset ``name`` (its ``note`` left out)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} "
                         "(python -m cm_core train --list-presets)")
    out = {k: v for k, v in PRESETS[name].items() if k != "note"}
    assert set(out) <= _FIELDS, set(out) - _FIELDS
    return {**out, "preset": name}


def format_presets() -> str:
    """A table of every preset's main fields, for ``--list-presets``."""
    cols = ("method", "batch_size", "lr", "steps", "loss", "ema", "num_scales", "target_ema",
            "start_scales", "end_scales", "start_ema", "ict_start_scales", "ict_end_scales",
            "dropout", "precision", "image_size",
            "num_channels", "teacher")
    lines = []
    for name, p in PRESETS.items():
        vals = []
        for c in cols:
            if c in p and not (p.get("method") != "cd" and c in ("num_scales", "target_ema")) \
                    and not (p.get("method") != "ict" and c in ("ict_start_scales", "ict_end_scales")) \
                    and not (p.get("method") != "ct" and c in ("start_scales", "end_scales", "start_ema")):
                vals.append(f"{c}={p[c]}")
        lines.append(f"{name}\n    " + " ".join(vals) + f"\n    note: {p['note']}")
    return "\n".join(lines)
