"""Training dropout whose masks are a function of the sample's global position.

Each dropout layer ``l`` draws sample ``i``'s mask from a generator seeded by
``key(seed, s_i, dropout, l)``: the mask does not depend on the micro-batch, the rank, or on being
recomputed by gradient checkpointing (the generator is reseeded on every call). Outside
:func:`position_dropout` the layer behaves as the inference :class:`SeededDropout`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from ..models.network import SeededDropout
from .rng import STREAM_DROPOUT, key


class TrainDropout(SeededDropout):
    """Dropout with probability ``p_train`` driven by per-sample keys (see module docstring)."""

    def __init__(self, p_train: float, salt: int) -> None:
        super().__init__()
        self.p_train, self.salt = float(p_train), int(salt)
        self.keys: list[int] | None = None
        self._gens: dict[str, torch.Generator] = {}

    def _gen(self, device: torch.device) -> tuple[torch.Generator, torch.device]:
        name = str(device)
        if name not in self._gens:
            try:
                self._gens[name] = torch.Generator(device=device)
            except RuntimeError:  # a backend without device generators: draw on the CPU
                self._gens[name] = torch.Generator()
        g = self._gens[name]
        return g, g.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keys is None or self.p_train <= 0.0 or not self.training:
            return super().forward(x)
        if len(self.keys) != x.shape[0]:
            raise RuntimeError(f"dropout got {x.shape[0]} samples but {len(self.keys)} position keys")
        g, gdev = self._gen(x.device)
        u = torch.empty(x.shape, device=gdev, dtype=torch.float32)
        for i, k in enumerate(self.keys):
            g.manual_seed(key(k, self.salt))
            u[i].uniform_(generator=g)
        keep = (u.to(x.device) >= self.p_train).to(x.dtype)
        return x * keep / (1.0 - self.p_train)


def install_train_dropout(net: torch.nn.Module, p: float) -> int:
    """Replace every dropout layer of ``net`` by a :class:`TrainDropout`; returns how many."""
    count = 0
    for mod in list(net.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, (SeededDropout, torch.nn.Dropout)) and not isinstance(child, TrainDropout):
                setattr(mod, name, TrainDropout(p, count))
                count += 1
    return count


@contextlib.contextmanager
def position_dropout(net: torch.nn.Module, seed: int, positions: Sequence[int]) -> Iterator[None]:
    """Within the block, ``net``'s :class:`TrainDropout` layers use the masks of ``positions``."""
    layers = [m for m in net.modules() if isinstance(m, TrainDropout)]
    keys = [key(seed, s, STREAM_DROPOUT) for s in positions]
    for m in layers:
        m.keys = keys
    try:
        yield
    finally:
        for m in layers:
            m.keys = None
