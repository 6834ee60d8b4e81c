"""Multi-worker loading by global sample number, so every rank and worker count sees the same data.

Sample ``s`` (``= step * batch_size + j``) is image ``perm_e[s mod N]`` of epoch ``e = s // N``
(each epoch a fresh permutation, so an epoch visits every image once), flipped horizontally when
bit 0 of ``key(seed, s, flip)`` is set. Rank ``r`` of ``W`` takes positions
``[r B/W, (r+1) B/W)`` of each global batch ``B``, in ``grad_accum`` consecutive micro-batches.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .rng import STREAM_FLIP, epoch_permutation, key
from .sources import Source


class PositionDataset(Dataset):
    """``ds[s] -> (x [3, H, W] float32 in [-1, 1], label int64 (-1 = none), s)``."""

    def __init__(self, source: Source, seed: int, flip: bool = True) -> None:
        self.source, self.seed, self.flip = source, seed, flip
        self._perm: tuple[int, torch.Tensor] | None = None

    def index_of(self, s: int) -> tuple[int, int]:
        """(image index, epoch) of global sample ``s``."""
        n = len(self.source)
        epoch = s // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, n))
        return int(self._perm[1][s % n]), epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, s: int) -> tuple[torch.Tensor, int, int]:
        i, epoch = self.index_of(int(s))
        img, label = self.source.image(i, epoch)
        if self.flip and key(self.seed, s, STREAM_FLIP) & 1:
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        return x, label, int(s)


def local_positions(batch: int, world: int, rank: int) -> range:
    """Indices ``j`` of the global batch that ``rank`` computes."""
    if batch % world:
        raise ValueError(f"--batch-size {batch} must be divisible by the number of processes "
                         f"({world}); use e.g. {batch - batch % world or world}")
    per = batch // world
    return range(rank * per, (rank + 1) * per)


class StepBatches(Sampler[list[int]]):
    """Micro-batches of global sample numbers for steps ``start .. stop - 1`` on one rank."""

    def __init__(self, start: int, stop: int, batch: int, world: int, rank: int, accum: int) -> None:
        self.start, self.stop, self.batch, self.accum = start, stop, batch, accum
        self.mine = local_positions(batch, world, rank)
        if len(self.mine) % accum:
            raise ValueError(f"the per-process batch {len(self.mine)} is not divisible by "
                             f"--grad-accum {accum}")

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        m = len(self.mine) // self.accum
        for step in range(self.start, self.stop):
            base = step * self.batch
            for a in range(self.accum):
                yield [base + j for j in self.mine[a * m:(a + 1) * m]]


def _collate(items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    return (torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items]),
            [it[2] for it in items])


def make_loader(ds: PositionDataset, batches: StepBatches, workers: int,
                pin: bool = False) -> DataLoader:
    """A DataLoader yielding ``(x [m, 3, H, W], labels [m], positions list[m])`` per micro-batch."""
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                      pin_memory=pin, persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None)
