"""The runtime network: diffusers' ``UNet2DModel`` configured to equal OpenAI's ``UNetModel``.

``unet_config`` maps the original flags to a ``UNet2DModel`` config, and ``convert_state_dict``
renames an original ``state_dict`` (``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``)
to diffusers' keys. The original attention splits its fused ``qkv`` 1x1 convolution as
``(three, heads, head_dim)`` along channels (``QKVFlashAttention``), so q, k and v are the three
consecutive channel thirds. We write the mapping ourselves (rather than calling diffusers'
conversion script, which is not part of the package) so that it is derived from any arch's flags,
including small test models, and so that every source key is accounted for.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from diffusers import UNet2DModel

from .registry import ArchSpec

_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


@dataclass(frozen=True)
class MCDropout:
    """Monte-Carlo dropout for one call: rate ``p`` in [0, 1) and the generators of its masks
    (one ``torch.Generator`` for the batch, or a list with one per image)."""
    p: float
    rng: torch.Generator | list[torch.Generator]


# The dropout of the call running in this thread (or task). A context variable rather than an
# attribute of the layers: one cached network serves several requests at once, each with its own
# rate and generators, and diffusers' blocks give a layer no argument to carry them.
_ACTIVE: ContextVar[MCDropout | None] = ContextVar("cm_mc_dropout", default=None)


def dropout_rate(dropout_rng: MCDropout | torch.Generator | list[torch.Generator] | None,
                 default_p: float) -> float:
    """The rate a call runs at: ``dropout_rng.p`` for an :class:`MCDropout`, ``default_p`` for
    bare generators, 0 without any (dropout is then the identity)."""
    if dropout_rng is None:
        return 0.0
    return float(dropout_rng.p) if isinstance(dropout_rng, MCDropout) else float(default_p)


@contextlib.contextmanager
def mc_dropout(dropout_rng: MCDropout | torch.Generator | list[torch.Generator] | None,
               default_p: float) -> Iterator[None]:
    """Within the block, in this thread only, :class:`SeededDropout` layers drop at
    :func:`dropout_rate` with masks from the given generators."""
    p = dropout_rate(dropout_rng, default_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    rng = dropout_rng.rng if isinstance(dropout_rng, MCDropout) else dropout_rng
    token = _ACTIVE.set(MCDropout(p, rng) if p > 0 else None)  # type: ignore[arg-type]
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class SeededDropout(torch.nn.Module):
    """Dropout whose masks come from caller-given generators (Monte-Carlo dropout at inference).

    Active only inside :func:`mc_dropout` (entered by :class:`cm_core.models.denoiser.Denoiser`
    for a call with a dropout generator): a list of per-image generators makes an image's mask
    independent of the batch it is in. Elsewhere it is the identity, so eval-mode outputs are exact.
    The layer holds no state, so concurrent calls on one network do not see each other's dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = _ACTIVE.get()
        if drop is None:
            return x
        if isinstance(drop.rng, (list, tuple)):
            u = torch.stack([torch.rand(x.shape[1:], generator=g, device=g.device) for g in drop.rng])
        else:
            u = torch.rand(x.shape, generator=drop.rng, device=drop.rng.device)
        keep = (u.to(x.device) >= drop.p).to(x.dtype)
        return x * keep / (1.0 - drop.p)


def _levels(arch: ArchSpec) -> list[bool]:
    """For each resolution level, whether it has attention blocks."""
    return [arch.image_size // 2 ** i in arch.attention_resolutions for i in range(len(arch.mult))]


def unet_config(arch: ArchSpec) -> dict:
    """The ``UNet2DModel`` config whose forward equals the original ``UNetModel`` with these flags."""
    if not arch.resblock_updown:
        raise ValueError("only resblock_updown=True architectures are supported "
                         "(all released consistency models use it)")
    att = _levels(arch)
    return dict(
        sample_size=arch.image_size, in_channels=3, out_channels=3,
        layers_per_block=arch.num_res_blocks,
        block_out_channels=tuple(int(arch.num_channels * m) for m in arch.mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in att),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D"
                             for a in reversed(att)),
        attention_head_dim=arch.num_head_channels, attn_norm_num_groups=32, norm_num_groups=32,
        num_class_embeds=arch.num_classes if arch.class_cond else None,
        resnet_time_scale_shift="scale_shift" if arch.use_scale_shift_norm else "default",
        flip_sin_to_cos=True, freq_shift=0, time_embedding_type="positional",
        downsample_type="resnet", upsample_type="resnet", dropout=arch.dropout,
    )


def build_unet(arch: ArchSpec) -> UNet2DModel:
    """A randomly initialised runtime network for ``arch`` with seeded-dropout layers."""
    net = UNet2DModel(**unet_config(arch))
    install_seeded_dropout(net)
    return net.eval()


def install_seeded_dropout(net: torch.nn.Module) -> None:
    """Replace every ``nn.Dropout`` in ``net`` by a :class:`SeededDropout` (its rate is per call)."""
    for name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.Dropout):
                setattr(mod, child_name, SeededDropout())


def _prefix_pairs(arch: ArchSpec) -> Iterator[tuple[str, str, str]]:
    """(original prefix, diffusers prefix, "res" | "attn") for every block of the network."""
    att, n = _levels(arch), arch.num_res_blocks
    k = 1
    for i, has_att in enumerate(att):
        for j in range(n):
            yield f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", "res"
            if has_att:
                yield f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", "attn"
            k += 1
        if i != len(att) - 1:
            yield f"input_blocks.{k}.0", f"down_blocks.{i}.downsamplers.0", "res"
            k += 1
    yield "middle_block.0", "mid_block.resnets.0", "res"
    yield "middle_block.1", "mid_block.attentions.0", "attn"
    yield "middle_block.2", "mid_block.resnets.1", "res"
    k = 0
    for u, has_att in enumerate(reversed(att)):
        for j in range(n + 1):
            yield f"output_blocks.{k}.0", f"up_blocks.{u}.resnets.{j}", "res"
            if has_att:
                yield f"output_blocks.{k}.1", f"up_blocks.{u}.attentions.{j}", "attn"
            if j == n and u != len(att) - 1:
                yield f"output_blocks.{k}.{2 if has_att else 1}", f"up_blocks.{u}.upsamplers.0", "res"
            k += 1


_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb": "class_embedding", "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out",
        "out.2": "conv_out"}


def convert_state_dict(sd: Mapping[str, torch.Tensor], arch: ArchSpec) -> dict[str, torch.Tensor]:
    """Rename an original ``UNetModel`` state dict to ``UNet2DModel`` keys for ``arch``.

    Raises ``ValueError`` naming the keys that the architecture does not account for.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for old, new in _TOP.items():
        for p in ("weight", "bias"):
            if f"{old}.{p}" in sd:
                out[f"{new}.{p}"] = sd[f"{old}.{p}"]
                used.add(f"{old}.{p}")
    for old, new, what in _prefix_pairs(arch):
        for p in ("weight", "bias"):
            if what == "res":
                for o, d in _RES.items():
                    if f"{old}.{o}.{p}" in sd:
                        out[f"{new}.{d}.{p}"] = sd[f"{old}.{o}.{p}"]
                        used.add(f"{old}.{o}.{p}")
                continue
            key = f"{old}.qkv.{p}"
            if key in sd:
                q, k_, v = sd[key].reshape(sd[key].shape[0], -1).squeeze(-1).chunk(3, dim=0)
                out.update({f"{new}.to_q.{p}": q, f"{new}.to_k.{p}": k_, f"{new}.to_v.{p}": v})
                used.add(key)
            if f"{old}.norm.{p}" in sd:
                out[f"{new}.group_norm.{p}"] = sd[f"{old}.norm.{p}"]
                used.add(f"{old}.norm.{p}")
            if f"{old}.proj_out.{p}" in sd:
                w = sd[f"{old}.proj_out.{p}"]
                out[f"{new}.to_out.0.{p}"] = w.reshape(w.shape[0], -1).squeeze(-1)
                used.add(f"{old}.proj_out.{p}")
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"{len(extra)} checkpoint keys do not fit this architecture "
                         f"(image_size={arch.image_size}, num_res_blocks={arch.num_res_blocks}, "
                         f"attention at {arch.attention_resolutions}), e.g. {extra[:5]}; "
                         "is the model name / --arch right for this file?")
    return out


def load_converted(net: UNet2DModel, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` strictly, with an error that names ``source`` and the mismatch."""
    try:
        missing, unexpected = net.load_state_dict(dict(sd), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{source}: tensor shapes do not match the architecture ({str(e)[:400]}); "
                         "check the model name or architecture flags") from None
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the architecture: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                         "check the model name or architecture flags")
