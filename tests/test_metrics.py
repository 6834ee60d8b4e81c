"""The sample-quality metrics against independent re-statements of OpenAI's evaluator formulas on
fixed random features, plus the properties a metric must have."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from cm_core.evaluation import metrics as M


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated dimensions
    return (rng.normal(size=(n, d)) @ mix + shift).astype(np.float64)


def _fid_by_eigenvalues(a: np.ndarray, b: np.ndarray) -> float:
    """FID with tr(sqrtm(S1 S2)) as the sum of the square roots of the eigenvalues of S1 S2 (real and
    non-negative for two covariance matrices): no matrix square root at all."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev = np.linalg.eigvals(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


def test_fid_equals_the_formula_to_1e_4():
    a, b = _features(600, 24, 0), _features(500, 24, 1, shift=0.3)
    fid = M.frechet_distance(*M.statistics(a), *M.statistics(b))
    ref = _fid_by_eigenvalues(a, b)
    assert abs(fid - ref) / ref <= 1e-4
    assert fid == pytest.approx(M.frechet_distance(*M.statistics(b), *M.statistics(a)), rel=1e-6)  # symmetric
    assert abs(M.frechet_distance(*M.statistics(a), *M.statistics(a))) < 1e-6  # identical sets


def test_fid_of_two_known_gaussians():
    """Diagonal covariances commute: FID = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert M.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-12)


def test_fid_of_a_singular_covariance_is_finite():
    a = _features(5, 8, 2)  # 5 points in 8 dimensions: a rank-4 covariance
    b = _features(5, 8, 3)
    fid = M.frechet_distance(*M.statistics(a), *M.statistics(b))
    assert np.isfinite(fid) and fid > 0


def _is_by_loops(p: np.ndarray, split: int) -> float:
    out = []
    for i in range(0, len(p), split):
        part = p[i:i + split]
        py = part.mean(0)
        kl = [sum(q[c] * np.log(q[c] / py[c]) for c in range(len(q))) for q in part]
        out.append(np.exp(np.mean(kl)))
    return float(np.mean(out))


def test_inception_score_equals_the_formula_to_1e_5():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(250, 10)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for split in (250, 100):
        assert M.inception_score(p, split) == pytest.approx(_is_by_loops(p, split), rel=1e-5)
    assert M.inception_score(np.full((40, 10), 0.1)) == pytest.approx(1.0)  # no information: 1
    confident = np.eye(10)[np.arange(40) % 10] * (1 - 1e-9) + 1e-10  # every class, sure of each
    assert M.inception_score(confident) == pytest.approx(10.0, rel=1e-6)


def _pr_brute_force(ref: np.ndarray, smp: np.ndarray, k: int) -> tuple[float, float]:
    d_rr, d_ss, d_rs = (cdist(a, b, "sqeuclidean") for a, b in ((ref, ref), (smp, smp), (ref, smp)))
    r_ref, r_smp = np.sort(d_rr, 1)[:, k], np.sort(d_ss, 1)[:, k]
    precision = np.mean([any(d_rs[i, j] <= r_ref[i] for i in range(len(ref))) for j in range(len(smp))])
    recall = np.mean([any(d_rs[i, j] <= r_smp[j] for j in range(len(smp))) for i in range(len(ref))])
    return float(precision), float(recall)


def test_precision_recall_equal_the_definition_and_do_not_depend_on_the_blocks(monkeypatch):
    ref, smp = _features(120, 8, 5), _features(90, 8, 6, shift=0.8)
    want = _pr_brute_force(ref, smp, 3)
    got = M.precision_recall(ref, smp)
    assert abs(got[0] - want[0]) <= 0.01 and abs(got[1] - want[1]) <= 0.01
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    monkeypatch.setattr(M, "BLOCK", 7)  # many blocks, with ragged edges
    assert M.precision_recall(ref, smp) == got
    assert M.precision_recall(ref, ref) == (1.0, 1.0)


@pytest.mark.parametrize("call,needle", [
    (lambda: M.statistics(np.zeros((1, 4))), "at least 2"),
    (lambda: M.statistics(np.zeros((5, 4), np.uint8)), "float array"),
    (lambda: M.statistics(np.zeros(5)), r"\[N, D\]"),
    (lambda: M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "do not match"),
    (lambda: M.inception_score(np.zeros((0, 3))), "non-empty"),
    (lambda: M.precision_recall(np.zeros((10, 3)), np.zeros((10, 4))), "feature sizes differ"),
    (lambda: M.precision_recall(np.zeros((3, 3)), np.zeros((10, 3))), "more than 3"),
])
def test_bad_inputs_are_clear_errors(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
