"""K-fold helpers the shipped evaluation uses to choose and score the ring flag's threshold.

They live in the product (not in :mod:`training.experiments.crossval`, which also uses them) so
that :mod:`training.evaluate` never imports a research tool.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from training.metrics import best_f1_threshold, prevalence_weights


def fold_indices(strata: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified, seeded held-out indices of each of ``folds`` folds (together: every index once)."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(test) for _, test in splitter.split(np.zeros(len(strata)), strata)]


def mean_interval(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean over folds, its standard deviation and a Student-t interval of the mean."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) < 2:
        return {"mean": float(v.mean()) if len(v) else None, "sd": None, "ci95": None, "folds": len(v)}
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "ci95": [float(v.mean() - half), float(v.mean() + half)],
            "folds": len(v)}


def threshold_by_cv(y: np.ndarray, score: np.ndarray, fold: np.ndarray, prevalence: float | None = None) -> dict[str, Any]:
    """Threshold chosen on all out-of-fold scores, and per fold the F1 of one chosen on the other folds.

    With ``prevalence`` every F1 is weighted to that survey rate of positives (:func:`prevalence_weights`).
    """
    threshold, f1 = best_f1_threshold(y, score, prevalence_weights(y, prevalence))
    nested = []
    for i in np.unique(fold):
        t, _ = best_f1_threshold(y[fold != i], score[fold != i], prevalence_weights(y[fold != i], prevalence))
        held = fold == i
        nested.append(float(f1_score(y[held], score[held] >= t, sample_weight=prevalence_weights(y[held], prevalence),
                                     zero_division=0.0)))
    return {"threshold": threshold, "f1_pooled": f1, "f1_nested_by_fold": nested, "f1_nested": mean_interval(nested),
            "prevalence": prevalence}
