"""The feature space of the built-in colour digits, where Inception would be meaningless (32x32
digits, 10 classes) and unavailable offline.

:class:`DigitClassifier` is trained only on the held-out quarter of the real digits, which the
generative models never see: an RBF SVM gives the class (for class accuracy), an MLP's hidden
ReLU layer the features (for the Frechet distance and precision/recall) and its softmax the
class probabilities (for an Inception-Score-like score over 10 classes).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..sampling.generate import to_uint8
from ..train.data import load_digits32
from .metrics import frechet_distance, statistics

HIDDEN = 128
REAL_EPOCH = 2000  # colours of the real reference digits (apart from any training epoch)


def digit_features(images: torch.Tensor) -> np.ndarray:
    """Colour-invariant 8x8 ink maps [N, 64] (0..16) of images [N, 3, H, W] in [-1, 1].

    The background colour is the median of the border pixels; ink is each pixel's RGB distance
    to it, normalised by the image's maximum and average-pooled to 8x8.
    """
    x = (images.detach().cpu().float().clamp(-1, 1) + 1) / 2
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    bg = border.median(dim=2).values[:, :, None, None]
    ink = (x - bg).norm(dim=1, keepdim=True)
    ink = ink / ink.amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return (F.adaptive_avg_pool2d(ink, 8).flatten(1) * 16).numpy()


class DigitClassifier:
    """Classifier of colour digits, trained only on the held-out real digits (450 images).

    ``predict(images) -> [N]``: an RBF SVM on :func:`digit_features` (about 97% on the 1,347
    training-split digits it never saw). ``features(images) -> [N, 128]``: the hidden ReLU
    activations of an MLP trained on the same data; ``probabilities(images) -> [N, 10]``: its softmax.
    ``images``: [N, 3, H, W] in [-1, 1].
    """

    def __init__(self, seed: int = 0, hidden: int = HIDDEN) -> None:
        from sklearn.neural_network import MLPClassifier
        from sklearn.svm import SVC
        from threadpoolctl import threadpool_limits
        ds = load_digits32("heldout", seed=seed, epoch=1000)
        x, y = digit_features(ds.images), ds.labels.numpy()
        with threadpool_limits(1):  # BLAS rounds differently per thread count: one thread, one model
            self.svm = SVC(gamma=0.002, C=10.0).fit(x, y)
            self.mlp = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1.0, max_iter=2000,
                                     random_state=seed).fit(x, y)

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return self.svm.predict(digit_features(images))

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.outputs(images)[0]

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        return self.mlp.predict_proba(digit_features(images))

    def outputs(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features [N, 128], probabilities [N, 10], class [N]) from one pass of :func:`digit_features`."""
        ink = digit_features(images)
        hidden = np.maximum(ink @ self.mlp.coefs_[0] + self.mlp.intercepts_[0], 0.0)
        return hidden, self.mlp.predict_proba(ink), self.svm.predict(ink)


@functools.lru_cache(maxsize=1)
def shared_classifier() -> DigitClassifier:
    """The default :class:`DigitClassifier`, trained once per process (3 s on a CPU core) and
    shared; it is deterministic, so every process trains the same one."""
    return DigitClassifier()


def digit_frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to digit features ``a`` [N, D] and ``b`` [M, D],
    with 1e-6 always on both covariances' diagonals: dead ReLU units make them singular."""
    (mu_a, sa), (mu_b, sb) = statistics(a), statistics(b)
    eps = 1e-6 * np.eye(a.shape[1])
    return frechet_distance(mu_a, sa + eps, mu_b, sb + eps)


def real_digits_uint8(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The real digits of ``split`` as a reference batch: (uint8 [N, 32, 32, 3], labels [N])."""
    ds = load_digits32(split, epoch=REAL_EPOCH)  # type: ignore[arg-type]
    assert ds.labels is not None
    return to_uint8(ds.images), ds.labels.numpy()
