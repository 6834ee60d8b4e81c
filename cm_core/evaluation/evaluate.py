"""Evaluate a batch of samples against a reference batch: FID, sFID, IS, precision and recall
(Inception features), or FD, score, precision, recall and class accuracy (digits features).

Runs on one process or under ``torchrun`` (features sharded across ranks, rank 0 computes the
metrics); the numbers do not depend on the number of processes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..accel.distributed import init_group, local_device, rank_world
from ..models.checkpoints import CheckpointError, local_path, pick_device
from ..models.files import write_text_atomic
from ..models.registry import DIGITS_REFERENCE, INCEPTION_WEIGHTS, REFERENCES
from . import metrics
from .features import Extractor, batch_features, digits_extractor, inception_extractor
from .samples import ArrayBatch, ImageBatchFile, open_batch

FEATURES = ("auto", "inception", "digits")


def open_reference(ref: str | os.PathLike) -> ImageBatchFile | ArrayBatch:
    """A reference batch: a file path, a registry reference name (fetched with ``fetch --ref``),
    or ``digits32`` (the built-in real digits, training split)."""
    name = str(ref)
    if name == DIGITS_REFERENCE:
        from .digits import real_digits_uint8
        images, labels = real_digits_uint8("train")
        return ArrayBatch(DIGITS_REFERENCE, images, labels)
    if name in REFERENCES:
        spec = REFERENCES[name]
        path = local_path(spec)
        if not path.is_file():
            raise CheckpointError(f"reference batch {name} is not on disk ({path}); fetch it with: "
                                  f"{spec.fetch_command}")
        return open_batch(path)
    if not Path(name).exists() and os.sep not in name and not name.endswith(".npz"):
        raise CheckpointError(f"unknown reference {name!r}: give an .npz path or one of "
                              f"{', '.join([*REFERENCES, DIGITS_REFERENCE])}")
    return open_batch(name)


def pick_extractor(features: str, resolution: int, device: torch.device) -> Extractor:
    """``inception`` (weights must be on disk), ``digits`` (32px only), or ``auto``: Inception when
    its weights are on disk, else the digits features for 32px images."""
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; choose one of {', '.join(FEATURES)}")
    weights = local_path(INCEPTION_WEIGHTS)
    if features == "digits" or (features == "auto" and not weights.is_file() and resolution == 32):
        return digits_extractor()
    if not weights.is_file():
        raise CheckpointError(f"the Inception weights are not on disk ({weights}); fetch them with: "
                              f"{INCEPTION_WEIGHTS.fetch_command}"
                              + (" (or use --features digits for the built-in digits)" if resolution == 32 else ""))
    return inception_extractor(weights, device)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _stats(feats: np.ndarray, stats: dict[str, np.ndarray], mu: str, sigma: str) -> tuple[np.ndarray, np.ndarray]:
    """A reference's precomputed (mu, sigma) where it carries them, as OpenAI's evaluator uses."""
    return (stats[mu], stats[sigma]) if mu in stats and sigma in stats else metrics.statistics(feats)


def compute_metrics(ext: Extractor, sample_rows: np.ndarray, ref_rows: np.ndarray,
                    ref_stats: dict[str, np.ndarray], labels: np.ndarray | None) -> dict[str, float]:
    """The metrics of ``ext``'s feature space from feature rows of samples and reference."""
    s, r = ext.split(sample_rows), ext.split(ref_rows)
    precision, recall = metrics.precision_recall(r["pool"], s["pool"])
    if ext.name == "digits":
        from .digits import digit_frechet_distance
        out = {"fd": digit_frechet_distance(s["pool"], r["pool"]),
               "score": metrics.inception_score(s["probs"].astype(np.float64))}
        if labels is not None:
            out["class_accuracy"] = float(np.mean(s["class"][:, 0] == labels))
    else:
        out = {"fid": metrics.frechet_distance(*metrics.statistics(s["pool"]), *_stats(r["pool"], ref_stats, "mu", "sigma")),
               "sfid": metrics.frechet_distance(*metrics.statistics(s["spatial"]),
                                                *_stats(r["spatial"], ref_stats, "mu_s", "sigma_s")),
               "inception_score": metrics.inception_score(softmax(s["logits"]))}
    return {**out, "precision": precision, "recall": recall}


def evaluate_files(samples: str | os.PathLike, reference: str | os.PathLike, features: str = "auto",
                   batch_size: int = 100, device: str | None = None, progress: bool = True,
                   write_json: bool = True) -> dict | None:
    """Metrics of ``samples`` (an .npz in OpenAI's layout) against ``reference``; on rank 0 a dict
    (also written atomically as ``<samples>.metrics.json``), None on other ranks."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    rank, world = rank_world()
    dev = local_device(pick_device(device))
    init_group(dev)
    ref = open_reference(reference)
    batch = open_batch(samples, resolution=ref.resolution)
    ext = pick_extractor(features, batch.resolution, dev)
    show = progress and rank == 0
    sample_rows = batch_features(batch, ext, batch_size, rank, world, show)
    ref_rows = batch_features(ref, ext, batch_size, rank, world, show)
    if rank != 0:
        return None
    assert sample_rows is not None and ref_rows is not None
    result = {"samples": str(samples), "reference": str(reference), "features": ext.name,
              "num_samples": batch.count, "num_reference": ref.count,
              **compute_metrics(ext, sample_rows, ref_rows, ref.stats, batch.labels)}
    if write_json:
        write_json_atomic(metrics_path(samples), result)
    return result


def metrics_path(samples: str | os.PathLike) -> Path:
    """``samples.npz`` -> ``samples.metrics.json`` beside it."""
    p = Path(samples)
    return p.with_name(p.name.removesuffix(".npz") + ".metrics.json")


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
