"""Sample quality as the paper measures it: FID, sFID, Inception Score, precision and recall
(:mod:`.metrics`, on feature arrays, as OpenAI's ``evaluations/evaluator.py`` defines them), with
the FID Inception v3 (:mod:`.inception`) or, offline, the digits classifier (:mod:`.digits`).
:func:`.evaluate.evaluate_files` evaluates a samples ``.npz`` against a reference batch and
:func:`.run_model.evaluate_model` samples a model first (the ``eval`` and ``evaluate`` commands)."""
from __future__ import annotations

from .metrics import frechet_distance, inception_score, manifold_radii, precision_recall, statistics

__all__ = ["statistics", "frechet_distance", "inception_score", "precision_recall", "manifold_radii"]
