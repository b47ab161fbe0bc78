"""K-fold cross-validation of a training config over the small sets (rings, GZ2 votes).

A 56-galaxy test split moves a lot with small changes, so small sets are also scored by k-fold
cross-validation: fold ``i`` of each cross-validated set (stratified, seeded) is held out, the
rest of that set is split into training and validation as usual, the other sets keep their
standard splits (their test splits are never trained on), and a model is trained from scratch
with the config. Each held-out fold is scored; the summary gives the mean over folds with a
Student-t 95% interval over the folds, and the figure on all out-of-fold predictions pooled
with its bootstrap interval.

The ring flag's threshold is chosen on the pooled out-of-fold ring probabilities (maximum F1),
and its F1 is estimated honestly by choosing it on the other folds and scoring it on each fold.

``python -m training.experiments.crossval --config C [--folds 5] [--epochs N] [--limit N] [--seed N] [--threads N] --run-dir runs/cv``;
``python -m training.experiments.crossval --paired A/cv.json B/cv.json`` compares two recipes on the same
out-of-fold rings (the same data seed and folds): both AUCs and the paired bootstrap difference,
and the two averaged as an ensemble;
``... --config C --folds K --run-dir D --tta`` scores the fold models saved in D again, with the 8
rotations and flips of each held-out ring averaged, paired against the plain scores.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.model_selection import train_test_split

from training.config import Config, load_config, override
from training.data import SplitSet, cached_inputs, split_indices
from training.folds import fold_indices, mean_interval, threshold_by_cv
from training.metrics import auc_statistic, bootstrap_ci, columns, set_metrics

CV_SETS = ("gzdecals_rings", "gz2_votes")
FIGURES = {"gzdecals_rings": ["ring_auc"], "gz2_votes": ["rmse_ratio", "rmse_unconditional", "featured_auc"],
           "gz1_sdss": ["three_way_accuracy", "merger_auc"], "gz_kaggle_spiral": ["spiral_auc"]}


def fold_split(strata: np.ndarray, held_out: np.ndarray, seed: int, val: float) -> dict[str, np.ndarray]:
    """Train/val/test indices with ``held_out`` as test and the rest split stratified into train and val."""
    rest = np.setdiff1d(np.arange(len(strata)), held_out)
    train, valid = train_test_split(rest, test_size=val, random_state=seed + 1, stratify=strata[rest])
    return {"train": np.sort(train), "val": np.sort(valid), "test": held_out}


def summarise(per_fold: list[dict[str, dict[str, Any]]], oof: dict[str, dict[str, np.ndarray]], n_boot: int,
              ring_prevalence: float | None = None) -> dict[str, Any]:
    """Mean and interval over folds of each figure; pooled out-of-fold AUCs; the CV ring threshold."""
    out: dict[str, Any] = {"over_folds": {}, "pooled_out_of_fold": {}}
    for name, keys in FIGURES.items():
        for key in keys:
            values = [f.get(name, {}).get(key) for f in per_fold]
            if any(v is not None for v in values):
                out["over_folds"][f"{name}.{key}"] = mean_interval(values) | {"values": values}
    if "gzdecals_rings" in oof:
        y, score, fold = oof["gzdecals_rings"]["y"], oof["gzdecals_rings"]["score"], oof["gzdecals_rings"]["fold"]
        stat = auc_statistic(y, score)
        out["pooled_out_of_fold"]["gzdecals_rings.ring_auc"] = {
            "value": stat(np.arange(len(y))), "ci95": bootstrap_ci(stat, len(y), y, n_boot), "n": int(len(y)),
            "n_positive": int(y.sum())}
        out["ring_threshold"] = threshold_by_cv(y, score, fold, ring_prevalence)
    return out


def fold_data(config: Config, folds: int, cv_sets: tuple[str, ...] = CV_SETS):
    """The sets, their cached inputs and each cross-validated set's held-out indices per fold."""
    from training.train import read_sets

    sets = read_sets(config)
    cache = Path(config.data.cache_dir) if config.data.cache_dir else None
    inputs = [cached_inputs(s, config.recipe, cache) for s in sets]
    held = {s.name: fold_indices(s.strata, folds, config.data.seed) for s in sets if s.name in cv_sets}
    return sets, inputs, held


def fold_prepared(config: Config, data, folds: int, i: int):
    """Fold ``i``: its held-out part of each cross-validated set as the test split, the rest split
    into training and validation; the other sets on their standard splits."""
    from training.train import Prepared

    sets, inputs, held = data
    d = config.data
    splits: dict[str, list[SplitSet]] = {"train": [], "val": [], "test": []}
    for labelled, images in zip(sets, inputs):
        if labelled.name in held:
            idx = fold_split(labelled.strata, held[labelled.name][i], d.seed, d.val_fraction / (1 - 1 / folds))
        else:
            idx = split_indices(labelled.strata, d.seed, d.val_fraction, d.test_fraction)
        for split, rows in idx.items():
            splits[split].append(SplitSet(labelled.subset(rows), images[rows]))
    return Prepared(splits)


def crossvalidate(config: Config, folds: int = 5, cv_sets: tuple[str, ...] = CV_SETS, n_boot: int = 1000,
                  only: list[int] | None = None) -> dict[str, Any]:
    """Train one model per fold; returns per-fold figures, the summary, and writes ``cv.json``."""
    from training.train import fit, load_checkpoint, predict

    data = fold_data(config, folds, cv_sets)
    held = data[2]
    run = Path(config.output.run_dir)
    per_fold, oof = [], {name: {"y": [], "score": [], "fold": []} for name in held}
    ring_prevalence = None
    for i in range(folds):
        if only is not None and i not in only:
            continue
        prepared = fold_prepared(config, data, folds, i)
        ring_prevalence = prepared.survey_prevalence().get("ring")
        fold_config = override(config, output={"run_dir": str(run / f"fold{i}"), "onnx": "", "int8_onnx": ""})
        info = fit(fold_config, prepared)
        model = load_checkpoint(fold_config, info["checkpoint"])
        mean = prepared.train_mean_unconditional()
        figures = {}
        for part in prepared.splits["test"]:
            logits = predict(model, part.images)
            figures[part.name] = set_metrics(part.labelled, logits, mean, n_boot=200)
            if part.name == "gzdecals_rings":
                oof[part.name]["y"].append(part.labelled.table["ring"].to_numpy(int))
                oof[part.name]["score"].append(columns(logits)["odd_ring_prob"])
                oof[part.name]["fold"].append(np.full(len(part.labelled), i))
        figures["best_epoch"], figures["wall_s"] = info["best_epoch"], info["wall_s"]
        per_fold.append(figures)
        (run / f"fold{i}" / "figures.json").write_text(json.dumps(figures, indent=1))
        logging.warning("fold %d: %s", i, {f"{n}.{k}": figures.get(n, {}).get(k) for n, ks in FIGURES.items() for k in ks})
    pooled = {name: {k: np.concatenate(v) for k, v in parts.items()} for name, parts in oof.items() if parts["y"]}
    result = {"folds": folds, "cv_sets": list(held), "per_fold": per_fold, "config": config.to_dict(),
              "out_of_fold": {name: {k: v.tolist() for k, v in parts.items()} for name, parts in pooled.items()},
              **summarise(per_fold, pooled, n_boot, ring_prevalence)}
    run.mkdir(parents=True, exist_ok=True)
    (run / "cv.json").write_text(json.dumps(result, indent=1))
    return result


def dihedral_ring_scores(model, images: np.ndarray) -> np.ndarray:
    """``(8, n)`` ``odd_ring_prob`` of each image under the 8 right-angle rotations and flips, the
    image as given first."""
    from training.train import predict

    return np.stack([columns(predict(model, np.ascontiguousarray(np.rot90(images[..., ::-1] if flip else images, k,
                                                                          axes=(2, 3)))))["odd_ring_prob"]
                     for k in range(4) for flip in (False, True)])


def dihedral_ring_score(model, images: np.ndarray) -> np.ndarray:
    """``odd_ring_prob`` averaged over the 8 right-angle rotations and flips of each image
    (test-time augmentation: a ring has no preferred orientation)."""
    return dihedral_ring_scores(model, images).mean(axis=0)


def paired_ring_auc(y: np.ndarray, base: np.ndarray, candidate: np.ndarray, n_boot: int) -> dict[str, Any]:
    """Ring AUC of two scores of the same galaxies and their paired bootstrap difference."""
    from training.experiments.compare import paired

    return paired((auc_statistic(y, base), len(y), y), (auc_statistic(y, candidate), len(y), y), n_boot, seed=0)


def rescore_with_tta(config: Config, folds: int, n_boot: int = 1000) -> dict[str, Any]:
    """The saved fold models of a finished cross-validation (``output.run_dir``), scored again on
    their held-out rings with and without test-time augmentation; paired out-of-fold ring AUCs."""
    from training.train import load_checkpoint

    # a ring set's folds depend on it alone: the other sets' images need not be loaded
    rings_only = override(config, data={"sets": ["gzdecals_rings"]})
    data = fold_data(rings_only, folds)
    run = Path(config.output.run_dir)
    y, views = [], []
    for i in range(folds):
        part = fold_prepared(rings_only, data, folds, i).by_name("test")["gzdecals_rings"]
        y.append(part.labelled.table["ring"].to_numpy(int))
        views.append(dihedral_ring_scores(load_checkpoint(config, run / f"fold{i}" / "best.pt"), part.images))
    scores = np.concatenate(views, axis=1)
    return paired_ring_auc(np.concatenate(y), scores[0], scores.mean(axis=0), n_boot)


def paired_out_of_fold(base: dict[str, Any], candidate: dict[str, Any], n_boot: int = 1000) -> dict[str, Any]:
    """Ring AUC of two cross-validations on the same out-of-fold galaxies and their paired difference;
    ``ensemble``: the two models' ranks averaged (a two-model ensemble), paired with the base."""
    a, b = base["out_of_fold"]["gzdecals_rings"], candidate["out_of_fold"]["gzdecals_rings"]
    if a["y"] != b["y"] or a["fold"] != b["fold"]:
        raise ValueError("the two runs held out different galaxies (another data seed or fold count)")
    y, score_a, score_b = np.asarray(a["y"]), np.asarray(a["score"]), np.asarray(b["score"])
    mean_rank = (stats.rankdata(score_a) + stats.rankdata(score_b)) / 2
    return paired_ring_auc(y, score_a, score_b, n_boot) | {"ensemble": paired_ring_auc(y, score_a, mean_rank, n_boot)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.crossval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config")
    parser.add_argument("--paired", nargs=2, type=Path, metavar=("BASE", "CANDIDATE"),
                        help="two cv.json files: their out-of-fold ring AUCs and the paired difference")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, help="override train.epochs (and patience) for cheaper folds")
    parser.add_argument("--limit", type=int, help="at most this many images per set (the big sets)")
    parser.add_argument("--seed", type=int, help="override train.seed (the weights' and batches' seed; the folds keep data.seed)")
    parser.add_argument("--threads", type=int, help="override train.threads (1 lets two recipes run side by side)")
    parser.add_argument("--run-dir", default="runs/cv")
    parser.add_argument("--tta", action="store_true",
                        help="do not train: score the fold models saved in --run-dir on their held-out rings, "
                             "without (base) and with (candidate) the 8 rotations and flips averaged")
    args = parser.parse_args(argv)
    if args.paired:
        base, candidate = (json.loads(p.read_text()) for p in args.paired)
        print(json.dumps(paired_out_of_fold(base, candidate), indent=1))
        return 0
    if not args.config:
        parser.error("--config is required (or --paired)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    config = load_config(args.config)
    changes: dict[str, dict[str, Any]] = {"output": {"run_dir": args.run_dir}}
    train = {"seed": args.seed, "threads": args.threads}
    if args.epochs:
        train |= {"epochs": args.epochs, "patience": args.epochs}
    changes["train"] = {k: v for k, v in train.items() if v is not None}
    if args.limit:
        changes["data"] = {"limit": args.limit}
    if args.tta:
        print(json.dumps(rescore_with_tta(override(config, **changes), args.folds), indent=1))
        return 0
    result = crossvalidate(override(config, **changes), folds=args.folds)
    print(json.dumps({"over_folds": {k: {m: v[m] for m in ("mean", "ci95")} for k, v in result["over_folds"].items()},
                      "pooled_out_of_fold": result["pooled_out_of_fold"],
                      "ring_threshold": result.get("ring_threshold")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
