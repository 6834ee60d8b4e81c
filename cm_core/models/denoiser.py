"""The denoiser ``D(x, sigma)``: all sigma math of consistency models and EDM in one place.

Consistency models (paper eq. 7, Appendix C): ``f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, t(s))``
with ``c_skip = sd^2 / ((s - s_min)^2 + sd^2)`` and ``c_out = (s - s_min) sd / sqrt(s^2 + sd^2)``, so
``f(x, s_min) = x`` exactly (the boundary condition). EDM teachers (Karras et al. 2022, Table 1) use
``c_skip = sd^2 / (s^2 + sd^2)`` and ``c_out = s sd / sqrt(s^2 + sd^2)``. Both use
``c_in = 1 / sqrt(s^2 + sd^2)`` and the network time input ``250 log(s + 1e-44)``.
"""
from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from .network import MCDropout, mc_dropout
from .registry import Kind

#: dropout masks of a call: generators at the model's default rate, or an :class:`MCDropout` with
#: its own rate (see :func:`cm_core.models.network.mc_dropout`)
Rng = MCDropout | torch.Generator | list[torch.Generator] | None

# The released models' noise range and data scale (the paper's Appendix C, as Karras et al. 2022)
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5


class DenoiseFn(Protocol):
    """What every sampler and editor accepts: :class:`Denoiser`, the fast path's
    :class:`~cm_core.accel.fast.FastDenoiser`, or anything with the same contract. The noise range
    comes from it, never from a default."""

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    @property
    def sigma_data(self) -> float: ...

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor: ...


class Denoiser(torch.nn.Module):
    """``D(x, sigma, class_labels)`` over a network ``net(x_in, t, class_labels=...)``.

    ``x``: [B, C, H, W] in roughly [-1, 1] plus noise of std ``sigma``; ``sigma``: [B] or a float.
    Returns the (unclamped) clean estimate in ``x``'s dtype. The network may run in another
    dtype (bf16/fp16); the sigma scalings are computed in float32.
    """

    def __init__(self, net: torch.nn.Module, kind: Kind = "cm", sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, sigma_data: float = SIGMA_DATA, num_classes: int | None = None,
                 image_size: int | None = None, dropout: float = 0.0, name: str = "") -> None:
        super().__init__()
        if kind not in ("cm", "edm"):
            raise ValueError(f"kind must be 'cm' or 'edm', got {kind!r}")
        self.net, self.kind, self.name = net, kind, name
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.num_classes = num_classes
        self.image_size = image_size
        self.dropout = dropout

    @property
    def class_cond(self) -> bool:
        return bool(self.num_classes)

    @property
    def dropout(self) -> float:
        """The Monte-Carlo dropout rate of calls given bare generators (0 = deterministic); a call
        given an :class:`MCDropout` uses its own rate, so requests never change the model."""
        return self._dropout

    @dropout.setter
    def dropout(self, p: float) -> None:
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self._dropout = float(p)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in) for a float32 sigma tensor."""
        sd2 = self.sigma_data ** 2
        if self.kind == "cm":
            c_skip = sd2 / ((sigma - self.sigma_min) ** 2 + sd2)
            c_out = (sigma - self.sigma_min) * self.sigma_data / (sigma ** 2 + sd2) ** 0.5
        else:
            c_skip = sd2 / (sigma ** 2 + sd2)
            c_out = sigma * self.sigma_data / (sigma ** 2 + sd2) ** 0.5
        c_in = 1 / (sigma ** 2 + sd2) ** 0.5
        return c_skip, c_out, c_in

    @staticmethod
    def time_input(sigma: torch.Tensor) -> torch.Tensor:
        """Network time input ``1000 * 0.25 * log(sigma + 1e-44)``."""
        return 1000 * 0.25 * torch.log(sigma + 1e-44)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None, dropout_rng: Rng = None) -> torch.Tensor:
        sig = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(x.shape[0])
        c_skip, c_out, c_in = (c[:, None, None, None] for c in self.scalings(sig))
        net_dtype = next(self.net.parameters()).dtype
        x_in = (c_in * x.float()).to(net_dtype)
        with mc_dropout(dropout_rng, self._dropout):
            # time input in float32 (diffusers casts its embedding to the net's dtype): in fp16,
            # 250 log 80 = 1095.5 would round to 1096 (5.8e-2 off after clamping, measured)
            out = self.net(x_in, self.time_input(sig),
                           class_labels=check_labels(class_labels, x.shape[0], self.num_classes, x.device)).sample
        return (c_out * out.float() + c_skip * x.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, kind={self.kind}, sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}, sigma_data={self.sigma_data}, dropout={self._dropout}")


def check_labels(labels: torch.Tensor | int | None, n: int, num_classes: int | None,
                 device: torch.device | str) -> torch.Tensor | None:
    """The class labels of a batch of ``n``: [n] long on ``device`` (one label is repeated), None
    for an unconditional model (``num_classes`` falsy). Checked on the host when given there; a
    check of labels already on an accelerator would synchronise, so those are trusted."""
    if not num_classes:
        return None
    if labels is None:
        raise ValueError(f"this model is class-conditional: pass class_labels in [0, {num_classes - 1}] "
                         "(one per image)")
    lab = torch.as_tensor(labels).long().reshape(-1)
    if lab.numel() == 1 and n > 1:
        lab = lab.expand(n)
    if lab.numel() != n:
        raise ValueError(f"got {lab.numel()} class labels for a batch of {n}")
    if lab.device.type == "cpu" and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"class labels must be in [0, {num_classes - 1}], got {lab.tolist()}")
    return lab.to(device, non_blocking=True)


def noise_like(x: torch.Tensor, generator: Rng) -> torch.Tensor:
    """``torch.randn`` of ``x``'s shape from one generator (one draw for the batch) or a list of
    per-image generators (image i's noise depends only on generator i). Returned on ``x``'s device."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        n = torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device) for g in generator])
    else:
        dev = generator.device if generator is not None else x.device
        n = torch.randn(x.shape, generator=generator, device=dev)
    return n.to(device=x.device, dtype=x.dtype)


def sigma_noise_scale(sigma_next: float, sigma_min: float) -> float:
    """Std of the noise that takes a clean estimate to noise level ``sigma_next``: sqrt(t^2 - smin^2).

    Exactly 0 when ``sigma_next`` is sigma_min up to float rounding: the Karras grid's last point
    evaluates to 0.002000000000000003, for which the original adds noise of std ~1e-10; snapping
    it keeps known pixels exact (a change of at most ~1e-9, far below the reference tolerance).
    """
    if sigma_next - sigma_min <= 1e-9 * sigma_min:
        return 0.0
    return math.sqrt(sigma_next ** 2 - sigma_min ** 2)
