"""Held-out metrics and flag thresholds that work on any decision tree.

For each question: how often the predicted majority answer is the volunteers' majority answer,
and the RMSE of the predicted conditional fractions against the vote fractions, each next to what
always predicting the mean of the same set's training labels gives (an RMSE ratio below 1 means
the model learned something beyond that set's average). Only galaxies whose labels reach the
question for at least half of the volunteers count, as in Walmsley+22. For each of the tree's
flags: the AUC of its probability against "at least half of the volunteers gave one of its
answers" (or a class label saying the galaxy has, or has not, a one-answer flag's answer), and
its threshold chosen on validation data where enough such labels exist (else the tree's
default). Fractions and flag probabilities come from ``galaxy_infer.postprocess``, so these
figures describe what the catalog will contain.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from galaxy_infer.postprocess import flag_probability
from galaxy_infer.schema import Flag, Schema
from training.labels import LabelledSet
from training.metrics import _auc, best_f1_threshold, rmse

MIN_REACH = 0.5
"""A question counts for a galaxy when its labels say at least this share of volunteers reached it."""
MIN_POSITIVES = 3
"""Fewer labelled positives in validation than this: a flag keeps its default threshold."""


def reach(targets: np.ndarray, tree: Schema, unknown: float = np.nan) -> np.ndarray:
    """``(n, n_questions)`` share of volunteers who reached each question, from (partial) conditional
    targets; a NaN parent answer counts as ``unknown`` (1: a stated answer implies its question was
    reached), except that a path already at 0 stays 0."""
    out = np.ones((len(targets), len(tree.questions)), dtype=np.float64)
    position = {q.name: i for i, q in enumerate(tree.questions)}
    for i, q in enumerate(tree.questions):
        if q.parent is None:
            continue
        parent, answer = q.parent
        f = targets[:, tree.answer_index(parent, answer)].astype(np.float64)
        if q.asked_unless is not None:
            f = 1.0 - f
        f = np.where(np.isnan(f), unknown, f)
        above = out[:, position[parent]]
        with np.errstate(invalid="ignore"):
            out[:, i] = np.where((above == 0) | (f == 0), 0.0, above * f)
    return out


def flag_truth(targets: np.ndarray, flag: Flag, tree: Schema, negated: np.ndarray | None = None) -> np.ndarray:
    """Share of volunteers giving one of the flag's answers (NaN where the labels do not say); a
    one-answer flag is 0 where ``negated`` says the sample does not have that answer."""
    asked = reach(targets, tree)
    position = [q.name for q in tree.questions]
    total = np.zeros(len(targets))
    for question, answer in flag.answers:
        a = asked[:, position.index(question)]
        with np.errstate(invalid="ignore"):
            total = total + np.where(a == 0, 0.0, a * targets[:, tree.answer_index(question, answer)])
    if negated is not None and len(flag.answers) == 1:
        marked = np.zeros(tree.n_answers, bool)
        marked[tree.answer_index(*flag.answers[0])] = True
        known_not = ((negated > 0) == marked).all(axis=1)
        total = np.where(np.isnan(total) & known_not, 0.0, total)
    return total


def mean_targets(labelled: LabelledSet) -> np.ndarray:
    """Per answer, the mean known conditional fraction of a set (NaN where none is known)."""
    targets = labelled.targets.astype(np.float64)
    known = np.isfinite(targets)
    count = known.sum(axis=0)
    total = np.where(known, targets, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def question_metrics(targets: np.ndarray, fractions: np.ndarray, tree: Schema,
                     train_mean: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per question with labels: ``n``, ``accuracy`` (majority answer), ``rmse`` of the fractions, and
    what always predicting ``train_mean`` gives: ``accuracy_train_majority``, ``rmse_train_mean``
    and ``rmse_ratio`` (model over mean)."""
    asked = reach(targets, tree, unknown=1.0)
    out = {}
    for i, q in enumerate(tree.questions):
        s = tree.slices[q.name]
        rows = np.isfinite(targets[:, s]).all(axis=1) & (asked[:, i] >= MIN_REACH)
        if not rows.any():
            continue
        t, p = targets[rows, s], fractions[rows, s]
        m: dict[str, Any] = {"n": int(rows.sum()), "accuracy": float((t.argmax(1) == p.argmax(1)).mean()),
                             "rmse": rmse(t, p)}
        if train_mean is not None and np.isfinite(train_mean[s]).all():
            m["accuracy_train_majority"] = float((t.argmax(1) == train_mean[s].argmax()).mean())
            m["rmse_train_mean"] = rmse(t, np.broadcast_to(train_mean[s], t.shape))
            m["rmse_ratio"] = m["rmse"] / m["rmse_train_mean"] if m["rmse_train_mean"] > 0 else None
        out[q.name] = m
    return out


def tree_set_metrics(labelled: LabelledSet, logits: np.ndarray, tree: Schema,
                     train_mean: np.ndarray | None = None) -> dict[str, Any]:
    """Per-question figures, their means, and each flag's AUC where its labels allow."""
    fractions = tree.softmax_by_question(logits.astype(np.float32))
    asked = tree.proportion_asked(fractions)
    questions = question_metrics(labelled.targets, fractions, tree, train_mean)
    out: dict[str, Any] = {"n": int(len(labelled)), "questions": questions}
    if questions:
        out["mean_accuracy"] = float(np.mean([m["accuracy"] for m in questions.values()]))
        ratios = [m["rmse_ratio"] for m in questions.values() if m.get("rmse_ratio") is not None]
        if ratios:
            out["mean_rmse_ratio"] = float(np.mean(ratios))
    flags = {}
    for flag in tree.flags:
        truth = flag_truth(labelled.targets, flag, tree, labelled.negated)
        known = np.isfinite(truth)
        if known.any():
            y = (truth[known] >= 0.5).astype(int)
            flags[flag.name] = {"n": int(known.sum()), "n_positive": int(y.sum()),
                                "auc": _auc(y, flag_probability(fractions, asked, flag, tree)[known])}
    if flags:
        out["flags"] = flags
    return out


def choose_flag_thresholds(val: dict[str, tuple[LabelledSet, np.ndarray]], tree: Schema,
                           flags: tuple[Flag, ...] | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Per flag, the threshold on its probability that maximises F1 on the validation labels
    (positive: at least half of the volunteers gave one of its answers); flags with fewer than
    :data:`MIN_POSITIVES` labelled positives keep their default. Returns thresholds and how each was chosen."""
    flags = tree.flags if flags is None else flags
    thresholds, how = {}, {}
    for flag in flags:
        scores, labels = [], []
        for labelled, logits in val.values():
            truth = flag_truth(labelled.targets, flag, tree, labelled.negated)
            known = np.isfinite(truth)
            fractions = tree.softmax_by_question(logits.astype(np.float32))
            scores.append(flag_probability(fractions, tree.proportion_asked(fractions), flag, tree)[known])
            labels.append(truth[known] >= 0.5)
        y = np.concatenate(labels) if labels else np.zeros(0, bool)
        if y.sum() < MIN_POSITIVES:
            thresholds[flag.name] = float(flag.threshold)
            how[flag.name] = (f"default {flag.threshold} (fewer than {MIN_POSITIVES} labelled positives "
                              "in validation)")
            continue
        thresholds[flag.name], f1 = best_f1_threshold(y, np.concatenate(scores))
        how[flag.name] = f"max F1 on validation ({int(y.sum())} positives of {len(y)}): F1={f1:.3f}"
    return thresholds, how


def tree_score(parts_by_split: dict[str, list[LabelledSet]], logits: dict[str, dict[str, np.ndarray]],
               tree: Schema) -> dict[str, Any]:
    """Metrics per split and set, and flag thresholds chosen on validation, from ``logits[split][set]``;
    the same layout as :func:`training.evaluate.score` (no floors: they are the GZ2 model's)."""
    means = {p.name: mean_targets(p) for p in parts_by_split.get("train", [])}
    result: dict[str, Any] = {"tree": tree.name, "splits": {}}
    for split, parts in parts_by_split.items():
        result["splits"][split] = {p.name: tree_set_metrics(p, logits[split][p.name], tree, means.get(p.name))
                                   for p in parts}
    val = {p.name: (p, logits["val"][p.name]) for p in parts_by_split.get("val", [])}
    result["thresholds"], result["threshold_choice"] = choose_flag_thresholds(val, tree)
    result["floors_on_test"] = {}
    return result


def add_catalog_metrics(result: dict[str, Any], parts_by_split: dict[str, list[LabelledSet]],
                        logits: dict[str, dict[str, np.ndarray]], tree: Schema, shared: set[str]) -> None:
    """On GZ2, for the label catalogs (sets not in ``shared``, which have GZ2-specific figures): add
    the per-question figures, and choose from them the thresholds of flags that would keep their default."""
    catalogs = {split: [p for p in parts if p.name not in shared] for split, parts in parts_by_split.items()}
    if not any(catalogs.values()):
        return
    means = {p.name: mean_targets(p) for p in catalogs.get("train", [])}
    for split, parts in catalogs.items():
        for p in parts:
            result["splits"][split][p.name].update(tree_set_metrics(p, logits[split][p.name], tree, means.get(p.name)))
    defaults = tuple(f for f in tree.flags_with(result["thresholds"])
                     if result["threshold_choice"].get(f.name, "").startswith("default"))
    chosen, how = choose_flag_thresholds({p.name: (p, logits["val"][p.name]) for p in catalogs.get("val", [])},
                                         tree, defaults)
    for name, value in chosen.items():
        if not how[name].startswith("default"):
            result["thresholds"][name], result["threshold_choice"][name] = value, how[name]
