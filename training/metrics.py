"""Held-out metrics for each labelled set, computed from the catalog columns of ``postprocess``.

The same function the pipeline uses turns logits into fractions, reach probabilities and odd
feature probabilities, so these figures describe what the catalog will contain.

Every figure comes with its sample size and a 95% percentile bootstrap interval (``ci95``):
resampled with replacement within each class for the binary figures (so every resample has the
labelled positives it needs, as pROC does for ROC AUC), over galaxies for the others.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

from galaxy_infer.postprocess import postprocess
from galaxy_infer.schema import GZ2, ODD_FEATURES
from training.labels import LabelledSet

THREE_WAY = ("smooth", "face_on_disk", "edge_on_disk")
GZ1_THREE_WAY = {"elliptical": 0, "spiral_clockwise": 1, "spiral_anticlockwise": 1, "edge_on": 2}


def columns(logits: np.ndarray) -> dict[str, np.ndarray]:
    return postprocess(logits, {f: 0.5 for f in ODD_FEATURES})


def three_way_scores(c: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, 3)`` probabilities of smooth, face-on disk, edge-on disk from the tree outputs."""
    featured = c["smooth_or_featured_featured_or_disk_fraction"]
    return np.stack([c["smooth_or_featured_smooth_fraction"], featured * c["disk_edge_on_no_fraction"],
                     featured * c["disk_edge_on_yes_fraction"]], axis=1)


def spiral_probability(c: dict[str, np.ndarray]) -> np.ndarray:
    """Unconditional probability of spiral arms: featured x not edge-on x arms."""
    return (c["smooth_or_featured_featured_or_disk_fraction"] * c["disk_edge_on_no_fraction"]
            * c["has_spiral_arms_yes_fraction"])


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def unconditional_targets(targets: np.ndarray) -> np.ndarray:
    """Kaggle-style targets from conditional ones; unreached (NaN) questions count as 0."""
    return GZ2.unconditional(np.nan_to_num(targets, nan=0.0))


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


Statistic = Callable[[np.ndarray], "float | None"]
"""A figure computed on the galaxies at the given indices (resampled by the bootstrap)."""


def bootstrap_ci(statistic: Statistic, n: int, strata: np.ndarray | None = None, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of ``statistic`` over resamples of ``range(n)``.

    With ``strata`` each resample draws within each stratum as many as it holds. Resamples where
    the statistic is undefined are skipped; ``None`` when fewer than half are defined.
    """
    if n < 2 or n_boot < 1:
        return None
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == v) for v in np.unique(strata)]
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        v = statistic(idx)
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) < n_boot / 2:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def auc_statistic(y: np.ndarray, score: np.ndarray) -> Statistic:
    return lambda idx: _auc(y[idx], score[idx])


def _figures(stats: dict[str, tuple[Statistic, int, np.ndarray | None]], n_boot: int, seed: int) -> dict[str, Any]:
    """Point values (at all indices) and ``ci95`` intervals of named statistics."""
    out: dict[str, Any] = {}
    ci: dict[str, list[float] | None] = {}
    for key, (stat, n, strata) in stats.items():
        out[key] = stat(np.arange(n))
        ci[key] = bootstrap_ci(stat, n, strata, n_boot, seed) if out[key] is not None else None
    out["ci95"] = ci
    return out


def set_metrics(labelled: LabelledSet, logits: np.ndarray, train_mean: np.ndarray | None = None,
                n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The figures for one set, each with its ``ci95`` bootstrap interval (``n_boot`` resamples).

    ``train_mean`` is the mean unconditional target of gz2 training data (the RMSE baseline).
    """
    out, stats = set_statistics(labelled, logits, train_mean)
    figures = _figures(stats, n_boot, seed)
    rmses = {k.split(".", 1)[1]: figures.pop(k) for k in list(figures) if k.startswith("fraction_rmse.")}
    if rmses:
        figures["fraction_rmse"] = rmses
    return out | figures


def set_statistics(labelled: LabelledSet, logits: np.ndarray, train_mean: np.ndarray | None = None
                   ) -> tuple[dict[str, Any], dict[str, tuple[Statistic, int, np.ndarray | None]]]:
    """Counts for one set, and its figures as statistics ``(figure of indices, n, strata)`` to resample."""
    c = columns(logits)
    out: dict[str, Any] = {"n": int(len(labelled))}
    stats: dict[str, tuple[Statistic, int, np.ndarray | None]] = {}
    table = labelled.table
    if labelled.name == "gz1_sdss":
        classes = table["class_name"].to_numpy(str)
        keep = np.isin(classes, list(GZ1_THREE_WAY))
        y = np.array([GZ1_THREE_WAY[k] for k in classes[keep]])
        pred = three_way_scores(c)[keep].argmax(axis=1)
        stats["three_way_accuracy"] = (lambda i: float(accuracy_score(y[i], pred[i])), len(y), None)
        out["three_way_n"] = int(keep.sum())
        out["three_way_confusion"] = confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
        merger = (classes == "merger").astype(int)
        stats["merger_auc"] = (auc_statistic(merger, c["odd_merger_prob"]), len(merger), merger)
        out["merger_n_positive"] = int(merger.sum())
        disk = np.isin(classes[keep], ["spiral_clockwise", "spiral_anticlockwise", "edge_on"]).astype(int)
        stats["smooth_vs_featured_auc"] = (auc_statistic(disk, c["smooth_or_featured_featured_or_disk_fraction"][keep]),
                                           len(disk), disk)
    elif labelled.name == "gz_kaggle_spiral":
        y = (table["label"].to_numpy(str) == "spiral").astype(int)
        score = spiral_probability(c)
        stats["spiral_auc"] = (auc_statistic(y, score), len(y), y)
        stats["spiral_accuracy_at_0.5"] = (lambda i: float(((score[i] >= 0.5) == y[i]).mean()), len(y), y)
        out["spiral_n_positive"] = int(y.sum())
    elif labelled.name == "gzdecals_rings":
        y = table["ring"].to_numpy(int)
        stats["ring_auc"] = (auc_statistic(y, c["odd_ring_prob"]), len(y), y)
        out["ring_n_positive"] = int(y.sum())
        fractions = {"featured": ("smooth-or-featured_featured-or-disk_fraction", "smooth_or_featured_featured_or_disk_fraction"),
                     "edge_on_no": ("disk-edge-on_no_fraction", "disk_edge_on_no_fraction"),
                     "spiral_no": ("has-spiral-arms_no_fraction", "has_spiral_arms_no_fraction")}
        for k, (a, b) in fractions.items():
            truth, predicted = table[a].to_numpy(float), c[b]
            stats[f"fraction_rmse.{k}"] = (lambda i, t=truth, p=predicted: rmse(t[i], p[i]), len(truth), None)
    # Kaggle-style RMSE wherever a sample has (nearly) the whole tree: vote-fraction catalogs
    full = np.isfinite(labelled.targets[:, GZ2.slices["smooth_or_featured"]]).all(axis=1) & (
        np.isfinite(labelled.targets).sum(axis=1) > 20)
    if full.any():
        truth = unconditional_targets(labelled.targets[full])
        pred = GZ2.unconditional(GZ2.softmax_by_question(logits[full].astype(np.float32)))
        m = len(truth)
        stats["rmse_unconditional"] = (lambda i: rmse(truth[i], pred[i]), m, None)
        if train_mean is not None:
            stats["rmse_train_mean"] = (lambda i: rmse(truth[i], np.broadcast_to(train_mean, truth[i].shape)), m, None)
            stats["rmse_ratio"] = (lambda i: rmse(truth[i], pred[i]) / rmse(truth[i], np.broadcast_to(train_mean, truth[i].shape)),
                                   m, None)
        featured = GZ2.answer_index("smooth_or_featured", "featured_or_disk")
        simple = (truth[:, featured] > 0.5).astype(int)
        stats["featured_auc"] = (auc_statistic(simple, pred[:, featured]), m, simple)
        out["rmse_n"] = int(m)
    return out, stats


def survey_prevalence(train_gz2: LabelledSet | None, minimum: int = 3) -> dict[str, float]:
    """Per odd feature, the share of gz2_votes training galaxies whose volunteers' unconditional
    vote for it is >= 0.5: how common the feature is in an ordinary survey population. Features
    with fewer than ``minimum`` such galaxies are left out (no estimate)."""
    if train_gz2 is None:
        return {}
    truth = unconditional_targets(train_gz2.targets)
    out = {}
    for f in ODD_FEATURES:
        positive = truth[:, GZ2.answer_index("odd_feature", f)] >= 0.5
        if positive.sum() >= minimum:
            out[f] = float(positive.mean())
    return out


def prevalence_weights(y: np.ndarray, prevalence: float | None) -> np.ndarray | None:
    """Sample weights that make positives ``prevalence`` of the weighted total (None: as labelled).

    The validation sets with labelled positives are positive-rich (the ring set is half rings);
    F1 on them rewards a threshold that would flag most of a survey. Reweighted to the survey's
    prevalence, F1 weighs each false positive as often as one would turn up there.
    """
    if prevalence is None or not 0 < y.mean() < 1:
        return None
    return np.where(y, prevalence / y.mean(), (1 - prevalence) / (1 - y.mean()))


def choose_thresholds(val: dict[str, tuple[LabelledSet, np.ndarray]], default: float = 0.5,
                      prevalence: dict[str, float] | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Per odd feature, the threshold on ``odd_{f}_prob`` that maximises F1 on validation labels.

    Labels: merger from gz1 (class merger vs the rest), ring from GZ DECaLS rings, any feature
    from gz2 votes (positive where the unconditional vote fraction is >= 0.5). Where ``prevalence``
    gives a feature's survey rate, F1 is computed with the validation galaxies reweighted to it
    (:func:`prevalence_weights`). Features with fewer than 3 positives keep ``default``.
    Returns thresholds and how each was chosen.
    """
    prevalence = prevalence or {}
    scores: dict[str, list[np.ndarray]] = {f: [] for f in ODD_FEATURES}
    labels: dict[str, list[np.ndarray]] = {f: [] for f in ODD_FEATURES}
    for name, (labelled, logits) in val.items():
        c = columns(logits)
        if name == "gz1_sdss":
            scores["merger"].append(c["odd_merger_prob"])
            labels["merger"].append(labelled.table["class_name"].to_numpy(str) == "merger")
        elif name == "gzdecals_rings":
            scores["ring"].append(c["odd_ring_prob"])
            labels["ring"].append(labelled.table["ring"].to_numpy(int) == 1)
        elif name == "gz2_votes":
            truth = unconditional_targets(labelled.targets)
            for f in ODD_FEATURES:
                scores[f].append(c[f"odd_{f}_prob"])
                labels[f].append(truth[:, GZ2.answer_index("odd_feature", f)] >= 0.5)
    thresholds, how = {}, {}
    for f in ODD_FEATURES:
        y = np.concatenate(labels[f]) if labels[f] else np.zeros(0, bool)
        if y.sum() < 3:
            thresholds[f], how[f] = default, f"default {default} (fewer than 3 labelled positives in validation)"
            continue
        rate = prevalence.get(f)
        thresholds[f], f1 = best_f1_threshold(y, np.concatenate(scores[f]), prevalence_weights(y, rate))
        weighting = "" if rate is None else f" reweighted to a survey prevalence of {rate:.3f}"
        how[f] = f"max F1 on validation ({int(y.sum())} positives of {len(y)}){weighting}: F1={f1:.3f}"
    return thresholds, how


def best_f1_threshold(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    """The threshold on ``score`` with the highest (weighted) F1, and that F1.

    Candidates are the scores between the 1st and 99th percentile, so one extreme galaxy cannot set a flag.
    """
    precision, recall, thresholds = precision_recall_curve(y, score, sample_weight=weight)
    precision, recall = precision[:-1], recall[:-1]
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    low, high = np.quantile(score, [0.01, 0.99])
    f1 = np.where((thresholds >= low) & (thresholds <= high), f1, -1.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr
