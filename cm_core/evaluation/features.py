"""Features of image batches, sharded across processes.

An :class:`Extractor` maps uint8 NHWC images to one float32 row per image, made of named
column groups (``parts``). :func:`batch_features` streams a batch file and gives image ``i`` to
rank ``i % world`` (as sampling does); each rank runs fixed-size network batches (a short last
one padded by repeating its last image), so an image's features are bit-identical whatever the
number of processes, and rank 0 gathers them back in file order.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..accel.distributed import gather_strided, shard_size
from .samples import ArrayBatch, ImageBatchFile, SampleFileError


@dataclass(frozen=True)
class Extractor:
    """``fn(uint8 [n, R, R, 3]) -> float32 [n, sum(parts)]``; ``resolution``: the only size it takes."""

    name: str
    parts: tuple[tuple[str, int], ...]
    fn: Callable[[np.ndarray], np.ndarray]
    resolution: int | None = None

    @property
    def width(self) -> int:
        return sum(w for _, w in self.parts)

    def split(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Column groups of feature rows [N, width] by name."""
        out, start = {}, 0
        for name, w in self.parts:
            out[name] = rows[:, start:start + w]
            start += w
        return out


def inception_extractor(weights: str | Path, device: torch.device) -> Extractor:
    """pool_3 (2048), spatial (2023) and unbiased logits (1008) of the FID Inception v3."""
    from .inception import NUM_LOGITS, POOL_DIM, SPATIAL_DIM, load_inception
    net = load_inception(weights, device)

    @torch.inference_mode()
    def fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
        return torch.cat(net(x), dim=1).cpu().numpy()

    return Extractor("inception", (("pool", POOL_DIM), ("spatial", SPATIAL_DIM), ("logits", NUM_LOGITS)), fn)


def digits_extractor() -> Extractor:
    """The digits classifier's hidden features (128), class probabilities (10) and class (1)."""
    from .digits import HIDDEN, shared_classifier
    clf = shared_classifier()

    def fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        hidden, probs, cls = clf.outputs(x)
        return np.concatenate([hidden, probs, cls[:, None]], axis=1).astype(np.float32)

    return Extractor("digits", (("pool", HIDDEN), ("probs", 10), ("class", 1)), fn, resolution=32)


def batch_features(batch: ImageBatchFile | ArrayBatch, extractor: Extractor, batch_size: int = 100, rank: int = 0,
                   world: int = 1, progress: bool = False) -> np.ndarray | None:
    """Feature rows [N, width] of every image of ``batch`` in file order on rank 0 (None elsewhere)."""
    from tqdm import tqdm
    if extractor.resolution is not None and batch.resolution != extractor.resolution:
        raise SampleFileError(f"{batch.path}: {batch.resolution}px images; {extractor.name} features take "
                              f"{extractor.resolution}px images only")
    n = shard_size(batch.count, rank, world)
    out = np.empty((n, extractor.width), np.float32)
    done = 0
    with tqdm(total=batch.count, desc=f"{extractor.name} features", unit="img", disable=not progress) as bar:
        for block in batch.batches(batch_size * world):  # whole multiples of world but the last
            mine = block[rank::world]  # global index i % world == rank
            k = len(mine)
            if k:
                padded = np.concatenate([mine, np.repeat(mine[-1:], batch_size - k, axis=0)]) if k < batch_size else mine
                out[done:done + k] = extractor.fn(padded)[:k]
            done += k
            bar.update(len(block))
    feats, _ = gather_strided(out, np.zeros(n, np.int64), batch.count, rank, world)
    return feats if rank == 0 else None
