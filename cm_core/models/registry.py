"""Model registry: the 12 released consistency-model checkpoints (plus embedded models) as data.

Every spec is a frozen dataclass. Architectures use the original implementation's flag names
(``image_size``, ``num_channels``, ``num_res_blocks``, ``attention_resolutions``, ``class_cond``,
``use_scale_shift_norm``, ``resblock_updown``, ``num_head_channels``), see
``openai/consistency_models/scripts/launch.sh``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .messages import check_length, quote

MAX_NAME_CHARS = 100  # the longest model name accepted (registry names are under 30)

BASE_URL = "https://openaipublic.blob.core.windows.net/consistency"
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "embedded"


@dataclass(frozen=True)
class ArchSpec:
    """UNet flags in the original implementation's vocabulary."""

    image_size: int
    num_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    class_cond: bool
    use_scale_shift_norm: bool
    resblock_updown: bool = True
    num_head_channels: int = 64
    channel_mult: tuple[int, ...] | None = None
    num_classes: int = 1000
    dropout: float = 0.0

    @property
    def mult(self) -> tuple[int, ...]:
        """Channel multipliers; the original defaults per image size when not given."""
        if self.channel_mult is not None:
            return self.channel_mult
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                    64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
        if self.image_size not in defaults:
            raise ValueError(f"no default channel_mult for image_size {self.image_size}; "
                             f"give channel_mult explicitly (defaults exist for {sorted(defaults)})")
        return defaults[self.image_size]  # type: ignore[return-value]

    @classmethod
    def from_flags(cls, flags: dict) -> "ArchSpec":
        """Build from original flag names; ``attention_resolutions`` may be ``"32,16,8"``."""
        att = flags.get("attention_resolutions", "32,16,8")
        if isinstance(att, str):
            att = tuple(int(a) for a in att.split(",") if a.strip())
        mult = flags.get("channel_mult")
        if isinstance(mult, str):
            mult = tuple(float(m) if "." in m else int(m) for m in mult.split(",") if m.strip()) or None
        return cls(
            image_size=int(flags["image_size"]), num_channels=int(flags["num_channels"]),
            num_res_blocks=int(flags["num_res_blocks"]), attention_resolutions=tuple(att),
            class_cond=bool(flags.get("class_cond", False)),
            use_scale_shift_norm=bool(flags.get("use_scale_shift_norm", True)),
            resblock_updown=bool(flags.get("resblock_updown", True)),
            num_head_channels=int(flags.get("num_head_channels", 64)),
            channel_mult=tuple(mult) if mult else None,
            num_classes=int(flags.get("num_classes", 1000)),
            dropout=float(flags.get("dropout", 0.0)),
        )


IMAGENET64 = ArchSpec(64, 192, 3, (32, 16, 8), class_cond=True, use_scale_shift_norm=True)
LSUN256 = ArchSpec(256, 256, 2, (32, 16, 8), class_cond=False, use_scale_shift_norm=False)

Kind = Literal["cm", "edm"]


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint: where it lives, what network it is, how to sample it."""

    name: str
    arch: ArchSpec
    kind: Kind
    dataset: str
    method: str  # "CD-L2", "CD-LPIPS", "CT", "EDM teacher"
    ts: tuple[int, ...] = ()
    grid_size: int = 40  # points of the Karras grid that ts index
    url: str | None = None
    hub_repo: str | None = None
    filename: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    heun_steps: int = 40
    edit_steps: int = 2  # default evaluations for the zero-shot editors
    note: str = ""
    embedded: bool = False
    class_names: tuple[str, ...] = field(default=(), repr=False)

    @property
    def resolution(self) -> int:
        return self.arch.image_size

    @property
    def steps(self) -> int:
        """Deprecated name of :attr:`grid_size`."""
        warnings.warn("ModelSpec.steps is deprecated: use grid_size", DeprecationWarning, stacklevel=2)
        return self.grid_size

    @property
    def class_cond(self) -> bool:
        return self.arch.class_cond


def _released(name: str, arch: ArchSpec, kind: Kind, dataset: str, method: str,
              ts: tuple[int, ...], grid_size: int, note: str = "") -> ModelSpec:
    hub = None if kind == "edm" else f"openai/diffusers-{name}"
    return ModelSpec(name=name, arch=arch, kind=kind, dataset=dataset, method=method, ts=ts,
                     grid_size=grid_size, url=f"{BASE_URL}/{name}.pt", hub_repo=hub, filename=f"{name}.pt",
                     note=note)


_CAT_CD_NOTE = ("the paper's scripts give no multistep ts for LSUN cat CD; "
                "using bedroom CD-LPIPS's 0,17,39 / 40")
_EDM = ((0, 39), 40)  # EDM teachers sample with Heun; ts only for the multistep form

_RELEASED = [
    _released("edm_imagenet64_ema", IMAGENET64, "edm", "ImageNet 64", "EDM teacher", *_EDM),
    _released("cd_imagenet64_l2", IMAGENET64, "cm", "ImageNet 64", "CD-L2", (0, 22, 39), 40),
    _released("cd_imagenet64_lpips", IMAGENET64, "cm", "ImageNet 64", "CD-LPIPS", (0, 22, 39), 40),
    _released("ct_imagenet64", IMAGENET64, "cm", "ImageNet 64", "CT", (0, 106, 200), 201),
    _released("edm_bedroom256_ema", LSUN256, "edm", "LSUN bedroom 256", "EDM teacher", *_EDM),
    _released("cd_bedroom256_l2", LSUN256, "cm", "LSUN bedroom 256", "CD-L2", (0, 18, 39), 40),
    _released("cd_bedroom256_lpips", LSUN256, "cm", "LSUN bedroom 256", "CD-LPIPS", (0, 17, 39), 40),
    _released("ct_bedroom256", LSUN256, "cm", "LSUN bedroom 256", "CT", (0, 67, 150), 151),
    _released("edm_cat256_ema", LSUN256, "edm", "LSUN cat 256", "EDM teacher", *_EDM),
    _released("cd_cat256_l2", LSUN256, "cm", "LSUN cat 256", "CD-L2", (0, 17, 39), 40, _CAT_CD_NOTE),
    _released("cd_cat256_lpips", LSUN256, "cm", "LSUN cat 256", "CD-LPIPS", (0, 17, 39), 40,
              _CAT_CD_NOTE),
    _released("ct_cat256", LSUN256, "cm", "LSUN cat 256", "CT", (0, 62, 150), 151),
]

# 1.37M parameters (5.5 MB float32); attention only at 8x8 and in the middle block keeps one-step
# generation of 16 images at ~40 ms on 2 CPU cores (attention at 16x16 as well costs 1.7x per step).
DIGITS32 = ArchSpec(32, 32, 1, (8,), class_cond=True, use_scale_shift_norm=True,
                    num_head_channels=32, channel_mult=(1, 2, 2), num_classes=10)
DIGIT_NAMES = tuple(str(i) for i in range(10))

_EMBEDDED = [
    ModelSpec(name="cd_digits32", arch=DIGITS32, kind="cm", dataset="digits 32 (built-in)",
              method="CD-PH", ts=(0, 22, 39), grid_size=40, filename="cd_digits32.safetensors",
              embedded=True, class_names=DIGIT_NAMES, edit_steps=9,
              note="distilled here from edm_digits32 with a pseudo-Huber loss, N=18, mu=0.95 "
                   "(see checkpoints/embedded/TRAINING.md)"),
    ModelSpec(name="ct_digits32", arch=DIGITS32, kind="cm", dataset="digits 32 (built-in)",
              method="CT", ts=(0, 22, 39), grid_size=40, filename="ct_digits32.safetensors",
              embedded=True, class_names=DIGIT_NAMES, edit_steps=9,
              note="consistency training here, pseudo-Huber loss, initialised from edm_digits32's "
                   "weights (ECT-style; see checkpoints/embedded/TRAINING.md)"),
    ModelSpec(name="edm_digits32", arch=DIGITS32, kind="edm", dataset="digits 32 (built-in)",
              method="EDM teacher", ts=(0, 39), grid_size=40, filename="edm_digits32.safetensors",
              embedded=True, class_names=DIGIT_NAMES, heun_steps=18,
              note="EDM teacher trained here (see checkpoints/embedded/TRAINING.md)"),
]

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _RELEASED + _EMBEDDED}
DEFAULT_MODEL = "cd_digits32"


def names() -> list[str]:
    """All registered model names, released first."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """Look up a model by name; unknown names raise :class:`UnknownModelError` listing the valid ones."""
    check_length("the model name", name, MAX_NAME_CHARS)
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value from an API client
        raise UnknownModelError(f"unknown model {quote(name)}; valid names: {', '.join(REGISTRY)}") from None


REF_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches"


@dataclass(frozen=True)
class DataFile:
    """A file fetched into the checkpoint directory beside the models: a reference batch of real
    images (OpenAI's evaluation layout, with precomputed statistics) or the Inception weights.
    ``sha256_prefix``: the leading hex digits of the sha256 that the file name carries."""

    name: str
    url: str
    filename: str
    description: str
    dataset: str = ""
    resolution: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None

    @property
    def fetch_command(self) -> str:
        return f"python -m cm_core fetch --ref {self.name}"


def _ref(name: str, path: str, dataset: str, resolution: int) -> DataFile:
    return DataFile(name, f"{REF_URL}/{path}", path.rsplit("/", 1)[-1],
                    f"OpenAI's reference batch for {dataset}", dataset, resolution)


REFERENCES: dict[str, DataFile] = {r.name: r for r in (
    _ref("imagenet64", "imagenet/64/VIRTUAL_imagenet64_labeled.npz", "ImageNet 64", 64),
    _ref("bedroom256", "lsun/bedroom/VIRTUAL_lsun_bedroom256.npz", "LSUN bedroom 256", 256),
    _ref("cat256", "lsun/cat/VIRTUAL_lsun_cat256.npz", "LSUN cat 256", 256),
)}
INCEPTION_WEIGHTS = DataFile(
    "inception", "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth",
    "TF Inception v3 (2015-12-05) converted to a PyTorch state dict by torch-fidelity",
    sha256_prefix="6726825d")
DIGITS_REFERENCE = "digits32"  # built in: the real digits, nothing to fetch


def get_data_file(name: str) -> DataFile:
    """A reference batch or ``inception`` by name; unknown names list the valid ones."""
    files = {**REFERENCES, INCEPTION_WEIGHTS.name: INCEPTION_WEIGHTS}
    if name not in files:
        raise UnknownModelError(f"unknown reference {quote(name)}; valid names: {', '.join(files)}"
                                f" ({DIGITS_REFERENCE} is built in)")
    return files[name]


def reference_for(spec: ModelSpec) -> str | None:
    """The reference batch name of a model's dataset (``digits32`` for the embedded models)."""
    if spec.embedded:
        return DIGITS_REFERENCE
    return next((r.name for r in REFERENCES.values() if r.dataset == spec.dataset), None)
