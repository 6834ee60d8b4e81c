"""Sample-quality metrics on feature arrays, as OpenAI's ``evaluations/evaluator.py`` defines them.

* :func:`statistics` and :func:`frechet_distance`: FID (and sFID, on the spatial features) with
  the TTUR formula ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))``;
* :func:`inception_score`: the mean over splits of ``exp(mean_x KL(p(y|x) || p(y)))``;
* :func:`precision_recall`: Kynkaanniemi et al. (2019): a set's manifold is the union of balls
  around its points whose radius is the distance to the k-th nearest neighbour (squared Euclidean,
  as the evaluator's ``ManifoldEstimator``); precision is the fraction of samples inside the
  reference manifold, recall the fraction of references inside the sample manifold. Distances are
  computed a block at a time, so 50k x 50k features fit in memory, in float32 (the TF evaluator
  casts them to float16 where that stays finite, so a point on a ball's edge may fall either way).

Features are float arrays [N, D]; the functions use numpy and scipy only.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

BLOCK = 10_000  # rows and columns of one distance block (the evaluator's batch sizes)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]): the mean and ``np.cov(rowvar=False)`` of features [N, D] (N >= 2)."""
    f = _features(features, "features")
    if len(f) < 2:
        raise ValueError(f"statistics need at least 2 feature rows, got {len(f)}")
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """The Frechet distance of two Gaussians. A singular product ``sigma1 sigma2`` is retried with
    ``eps`` on both diagonals; a tiny imaginary part of its square root is dropped, and a large
    one (a diagonal entry over 1e-3) is an error."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"the statistics do not match: mu {mu1.shape} / {mu2.shape}, "
                         f"sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular product of covariances; adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """Inception Score of class probabilities [N, C] (rows sum to 1): over consecutive splits of
    ``split_size`` rows, ``exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y)))``, then the mean."""
    p = _features(probs, "probs")
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores))


def _features(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what} must be a non-empty float array [N, D], got {a.dtype} {a.shape}")
    return a


def _sq_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(u), len(v)] in float32, clipped at 0."""
    d = (u * u).sum(1)[:, None] - 2.0 * u @ v.T + (v * v).sum(1)[None, :]
    return np.maximum(d, 0.0)


def manifold_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """[N]: each row's squared distance to its k-th nearest neighbour (itself excluded)."""
    f = _features(features, "features").astype(np.float32)
    if len(f) <= k:
        raise ValueError(f"k = {k} nearest neighbours need more than {k} feature rows, got {len(f)}")
    radii = np.empty(len(f), dtype=np.float32)
    for i in range(0, len(f), BLOCK):
        d = np.concatenate([_sq_distances(f[i:i + BLOCK], f[j:j + BLOCK]) for j in range(0, len(f), BLOCK)], 1)
        radii[i:i + BLOCK] = np.partition(d, k, axis=1)[:, k]
    return radii


def precision_recall(ref_features: np.ndarray, sample_features: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of samples against references (see the module doc)."""
    ref = _features(ref_features, "reference features").astype(np.float32)
    smp = _features(sample_features, "sample features").astype(np.float32)
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"feature sizes differ: {ref.shape[1]} (reference) and {smp.shape[1]} (samples)")
    r_ref, r_smp = manifold_radii(ref, k), manifold_radii(smp, k)
    ref_in = np.zeros(len(ref), bool)  # a reference inside the sample manifold (recall)
    smp_in = np.zeros(len(smp), bool)  # a sample inside the reference manifold (precision)
    for i in range(0, len(ref), BLOCK):
        for j in range(0, len(smp), BLOCK):
            d = _sq_distances(ref[i:i + BLOCK], smp[j:j + BLOCK])
            ref_in[i:i + BLOCK] |= (d <= r_smp[None, j:j + BLOCK]).any(1)
            smp_in[j:j + BLOCK] |= (d <= r_ref[i:i + BLOCK, None]).any(0)
    return float(smp_in.mean()), float(ref_in.mean())
