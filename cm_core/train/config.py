"""The training configuration: one flat dataclass, stored as JSON inside every checkpoint."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..models.registry import ArchSpec


@dataclass
class TrainConfig:
    """Everything a run needs; ``method`` is ``"edm"``, ``"cd"``, ``"ct"``, ``"ict"`` or ``"ect"``.

    Architecture fields use the original UNet flag names. Schedules (paper Sec. 3-5, Table 3):
    EDM samples ``ln sigma ~ N(p_mean, p_std^2)``; CD uses an ``num_scales``-point Karras grid,
    one Heun step of the teacher and a target EMA ``target_ema``; CT grows the grid from
    ``start_scales`` to ``end_scales`` with ``mu(k) = exp(s0 ln(start_ema) / N(k))``; iCT doubles
    its grid from ``ict_start_scales`` to ``ict_end_scales`` and draws lognormal pairs
    (``ict_p_mean``, ``ict_p_std``; ECT draws its ``t`` from the same lognormal), see
    :mod:`cm_core.train.ict` and :mod:`cm_core.train.ect`.
    """

    method: str = "edm"
    data: str = "digits"
    out: str = "runs/edm"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 4e-4
    warmup: int = 200
    grad_clip: float = 1.0
    ema: float = 0.999
    loss: str = "pseudo_huber"
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    save_every: int = 500
    sample_every: int = 0  # a fixed-seed sample grid every N steps (0: none); see train/watch.py
    # scale-out (see cm_core/train/engine.py): per-position seeding, accumulation, precision
    rng: str = "position"  # "position" (world-size independent) or "step" (legacy, 1 process)
    grad_accum: int = 1
    workers: int = 0
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast + grad scaler)
    grad_checkpoint: bool = False
    optimizer: str = "adam"  # adam or radam (the original's)
    weight_decay: float = 0.0
    ema_warmup: bool = True  # decay min(ema, (1+k)/(10+k)); the original uses the fixed rate
    ema_rates: str = ""  # extra EMA decays, saved as ema_<rate>.safetensors
    preset: str | None = None
    # architecture (original flag names)
    image_size: int = 32
    num_channels: int = 32
    channel_mult: str = "1,2,2"
    num_res_blocks: int = 1
    attention_resolutions: str = "8"
    num_head_channels: int = 32
    class_cond: bool = True
    use_scale_shift_norm: bool = True
    num_classes: int = 10
    dropout: float = 0.0
    # noise levels
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    init: str | None = None  # start from these network weights (registry name or file)
    # EDM
    p_mean: float = -1.2
    p_std: float = 1.2
    # CD
    teacher: str | None = None
    num_scales: int = 18
    target_ema: float = 0.95
    init_from_teacher: bool = True
    # CT
    start_scales: int = 2
    end_scales: int = 150
    start_ema: float = 0.9
    # iCT (Song & Dhariwal 2023): lognormal noise-level pairs, a doubling curriculum, no EMA target
    ict_p_mean: float = -1.1
    ict_p_std: float = 2.0
    ict_start_scales: int = 10
    ict_end_scales: int = 1280
    # ECT (Geng et al. 2024): r(t) = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), a stage per ect_double steps
    ect_double: int = 500
    ect_q: float = 2.0
    ect_k: float = 8.0
    ect_b: float = 1.0
    ect_c: float = 0.0
    ect_weighting: str = "snr_plus_k"  # 1/t^2 + 1/sigma_data^2 (ECT's), inverse_gap (iCT's), uniform

    def arch(self) -> ArchSpec:
        """The network's :class:`ArchSpec`."""
        return ArchSpec.from_flags({
            "image_size": self.image_size, "num_channels": self.num_channels,
            "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": self.attention_resolutions, "class_cond": self.class_cond,
            "use_scale_shift_norm": self.use_scale_shift_norm, "resblock_updown": True,
            "num_head_channels": self.num_head_channels, "channel_mult": self.channel_mult,
            "num_classes": self.num_classes, "dropout": self.dropout})

    @property
    def kind(self) -> str:
        """Output parameterisation: ``"edm"`` for teachers, ``"cm"`` for consistency models."""
        return "edm" if self.method == "edm" else "cm"

    def ema_rate_list(self) -> list[float]:
        """The extra EMA decays of ``ema_rates`` (``"0.999,0.9999"`` -> [0.999, 0.9999])."""
        return [float(r) for r in self.ema_rates.split(",") if r.strip()]

    def check(self) -> None:
        """Raise ``ValueError`` naming the valid choices for any unknown enum-like field."""
        choices = {"method": ("edm", "cd", "ct", "ict", "ect"), "rng": ("position", "step"),
                   "precision": ("fp32", "bf16", "fp16"), "optimizer": ("adam", "radam"),
                   "ect_weighting": ("snr_plus_k", "inverse_gap", "uniform")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(valid)}, "
                                 f"got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("--batch-size and --grad-accum must be at least 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, **override: Any) -> "TrainConfig":
        """Rebuild from :meth:`to_json`, ignoring unknown keys, then apply ``override``."""
        known = {f.name for f in fields(cls)}
        raw = json.loads(text)
        d = {k: v for k, v in raw.items() if k in known}
        d.setdefault("rng", "step")  # configs written before per-position seeding existed
        d.setdefault("ect_weighting", "inverse_gap")  # ECT configs written before the choice existed
        d.update({k: v for k, v in override.items() if v is not None})
        return cls(**d)
