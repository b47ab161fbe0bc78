"""Held-out metrics for each labelled set, computed from the catalog columns of ``postprocess``.

The same function the pipeline uses turns logits into fractions, reach probabilities and odd
feature probabilities, so these figures describe what the catalog will contain.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score, roc_curve

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


def set_metrics(labelled: LabelledSet, logits: np.ndarray, train_mean: np.ndarray | None = None) -> dict[str, Any]:
    """The figures for one set; ``train_mean`` is the mean unconditional target of gz2 training data."""
    c = columns(logits)
    out: dict[str, Any] = {"n": int(len(labelled))}
    table = labelled.table
    if labelled.name == "gz1_sdss":
        classes = table["class_name"].to_numpy(str)
        keep = np.isin(classes, list(GZ1_THREE_WAY))
        y = np.array([GZ1_THREE_WAY[k] for k in classes[keep]])
        pred = three_way_scores(c)[keep].argmax(axis=1)
        out["three_way_accuracy"] = float((pred == y).mean())
        out["three_way_n"] = int(keep.sum())
        out["three_way_confusion"] = confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
        merger = (classes == "merger").astype(int)
        out["merger_auc"] = _auc(merger, c["odd_merger_prob"])
        out["merger_n_positive"] = int(merger.sum())
        disk = np.isin(classes, ["spiral_clockwise", "spiral_anticlockwise", "edge_on"])
        out["smooth_vs_featured_auc"] = _auc(disk[keep].astype(int), c["smooth_or_featured_featured_or_disk_fraction"][keep])
    elif labelled.name == "gz_kaggle_spiral":
        y = (table["label"].to_numpy(str) == "spiral").astype(int)
        score = spiral_probability(c)
        out["spiral_auc"] = _auc(y, score)
        out["spiral_accuracy_at_0.5"] = float(((score >= 0.5) == y).mean())
    elif labelled.name == "gzdecals_rings":
        y = table["ring"].to_numpy(int)
        out["ring_auc"] = _auc(y, c["odd_ring_prob"])
        fractions = {"featured": ("smooth-or-featured_featured-or-disk_fraction", "smooth_or_featured_featured_or_disk_fraction"),
                     "edge_on_no": ("disk-edge-on_no_fraction", "disk_edge_on_no_fraction"),
                     "spiral_no": ("has-spiral-arms_no_fraction", "has_spiral_arms_no_fraction")}
        out["fraction_rmse"] = {k: rmse(table[a].to_numpy(float), c[b]) for k, (a, b) in fractions.items()}
    # Kaggle-style RMSE wherever a sample has (nearly) the whole tree: vote-fraction catalogs
    full = np.isfinite(labelled.targets[:, GZ2.slices["smooth_or_featured"]]).all(axis=1) & (
        np.isfinite(labelled.targets).sum(axis=1) > 20)
    if full.any():
        truth = unconditional_targets(labelled.targets[full])
        pred = GZ2.unconditional(GZ2.softmax_by_question(logits[full].astype(np.float32)))
        out["rmse_unconditional"] = rmse(truth, pred)
        if train_mean is not None:
            out["rmse_train_mean"] = rmse(truth, np.broadcast_to(train_mean, truth.shape))
            out["rmse_ratio"] = out["rmse_unconditional"] / out["rmse_train_mean"]
        simple = (truth[:, GZ2.answer_index("smooth_or_featured", "featured_or_disk")] > 0.5).astype(int)
        out["featured_auc"] = _auc(simple, pred[:, GZ2.answer_index("smooth_or_featured", "featured_or_disk")])
    return out


def choose_thresholds(val: dict[str, tuple[LabelledSet, np.ndarray]], default: float = 0.5) -> tuple[dict[str, float], dict[str, str]]:
    """Per odd feature, the threshold on ``odd_{f}_prob`` that maximises F1 on validation labels.

    Labels: merger from gz1 (class merger vs the rest), ring from GZ DECaLS rings, any feature
    from gz2 votes (positive where the unconditional vote fraction is >= 0.5). Features with
    fewer than 3 positives keep ``default``. Returns thresholds and how each was chosen.
    """
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
        s = np.concatenate(scores[f])
        candidates = np.unique(np.quantile(s, np.linspace(0.01, 0.99, 197)))
        f1 = [f1_score(y, s >= t) for t in candidates]
        best = int(np.argmax(f1))
        thresholds[f] = float(candidates[best])
        how[f] = f"max F1 on validation ({int(y.sum())} positives of {len(y)}): F1={f1[best]:.3f}"
    return thresholds, how


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr
