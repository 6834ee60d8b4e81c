"""Randomness of a training step, seeded by the global position so the world size does not matter.

Global sample number ``s = step * batch_size + j`` (``j`` = index inside the global batch) names
every draw: which image (an epoch permutation seeded by ``(seed, epoch)``, ``epoch = s // N``),
its flip, its noise and noise level (a generator per sample seeded by ``key(seed, s, stream)``)
and its dropout masks. Splitting the global batch over ranks or accumulation steps changes only
the order of float reductions. ``StepRng`` is the legacy scheme (one generator per step), kept so
runs started before per-position seeding resume and reproduce exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1
STREAM_NOISE, STREAM_FLIP, STREAM_DROPOUT, STREAM_EPOCH = 1, 2, 3, 4


def splitmix64(x: int) -> int:
    """The SplitMix64 finaliser (Steele et al. 2014): a bijective 64-bit mix of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def key(*parts: int) -> int:
    """A 63-bit seed from integers (``seed, s, stream, ...``), usable by ``manual_seed``."""
    h = 0
    for p in parts:
        h = splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order [n] (int64) in which epoch ``epoch`` visits the ``n`` training images."""
    g = torch.Generator().manual_seed(key(seed, epoch, STREAM_EPOCH))
    return torch.randperm(n, generator=g)


class StepRng:
    """Legacy draws: one generator for the whole batch of ``batch`` samples."""

    def __init__(self, g: torch.Generator, batch: int) -> None:
        self.g, self.batch = g, batch

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normals [batch, *shape] (CPU float32)."""
        return torch.randn((self.batch, *shape), generator=self.g)

    def randint(self, high: int) -> torch.Tensor:
        """Uniform integers in ``[0, high)`` [batch] (CPU int64)."""
        return torch.randint(0, high, (self.batch,), generator=self.g)


class PositionRng:
    """Per-sample draws: sample ``i`` uses its own generator seeded by ``key(seed, s_i, noise)``,
    so its values do not depend on which micro-batch or rank it lands in."""

    def __init__(self, seed: int, positions: Sequence[int]) -> None:
        self.gens = [torch.Generator().manual_seed(key(seed, s, STREAM_NOISE)) for s in positions]
        self.batch = len(self.gens)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normals [batch, *shape] (CPU float32), row ``i`` from sample ``i``'s stream."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.gens])

    def randint(self, high: int) -> torch.Tensor:
        """Uniform integers in ``[0, high)`` [batch] (CPU int64)."""
        return torch.cat([torch.randint(0, high, (1,), generator=g) for g in self.gens])


BatchRng = StepRng | PositionRng
