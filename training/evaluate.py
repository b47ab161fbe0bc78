"""Evaluate a trained model on every split: metrics JSON, thresholds and pictures in the run folder.

``python -m training.evaluate --config C --model model.onnx --out metrics.json`` scores an exported
model the same way (e.g. to give a shipped model's card its intervals without retraining it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from galaxy_infer.schema import GZ2
from training import plots
from training.folds import fold_indices, mean_interval, threshold_by_cv
from training.labels import SHARED_SETS
from training.metrics import (GZ1_THREE_WAY, THREE_WAY, auc_statistic, bootstrap_ci, choose_thresholds, columns,
                              roc_points, set_metrics, spiral_probability, three_way_scores)
from training.priors import odd_answers
from training.train import Prepared, predict
from training.tree_metrics import add_catalog_metrics, tree_score

FLOORS = {
    ("gz1_sdss", "three_way_accuracy"): (">=", 0.93),
    ("gz1_sdss", "merger_auc"): (">=", 0.85),
    ("gz_kaggle_spiral", "spiral_auc"): (">=", 0.88),
    ("gzdecals_rings", "ring_auc"): (">=", 0.80),
    ("gz2_votes", "rmse_ratio"): ("<=", 0.75),
}


SAMPLE_SIZE = {"three_way_accuracy": "three_way_n", "rmse_ratio": "rmse_n"}


def check_floors(test: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each floor's test value with its sample size and 95% bootstrap interval; pass is on the value."""
    out = {}
    for (name, key), (op, floor) in FLOORS.items():
        figures = test.get(name, {})
        value = figures.get(key)
        ok = None if value is None else (value >= floor if op == ">=" else value <= floor)
        out[f"{name}.{key}"] = {"value": value, "ci95": figures.get("ci95", {}).get(key),
                                "n": figures.get(SAMPLE_SIZE.get(key, "n")), "floor": f"{op} {floor}", "pass": ok}
    return out


def score(prepared: Prepared, logits: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Metrics per split and set, thresholds chosen on validation, floors checked on test, from
    ``logits[split][set]`` (a PyTorch model's or an exported ONNX file's). Trees other than GZ2
    get the tree-generic figures of :mod:`training.tree_metrics`."""
    labelled = {split: [p.labelled for p in parts] for split, parts in prepared.splits.items()}
    if prepared.tree.name != GZ2.name:
        return tree_score(labelled, logits, prepared.tree)
    mean = prepared.train_mean_unconditional()
    result: dict[str, Any] = {"splits": {}}
    for split, parts in prepared.splits.items():
        result["splits"][split] = {p.name: set_metrics(p.labelled, logits[split][p.name], mean) for p in parts}
    val = {p.name: (p.labelled, logits["val"][p.name]) for p in prepared.splits["val"]}
    prevalence = prepared.survey_prevalence()
    result["survey_prevalence"] = prevalence
    thresholds, how = choose_thresholds(val, prevalence=prevalence)
    result["floors_on_test"] = check_floors(result["splits"]["test"])
    rings = ring_check(prepared, logits, prevalence=prevalence.get("ring"))
    if rings is not None:
        result["ring_check_val_test"] = rings
        chosen = rings["threshold"]
        thresholds["ring"] = chosen["threshold"]
        nested = chosen["f1_nested"]
        how["ring"] = (f"max F1 over the {rings['n']} held-out ring-set galaxies, cross-validated in {rings['folds']} folds"
                       + (f", reweighted to a survey prevalence of {chosen['prevalence']:.3f}" if chosen["prevalence"] else "")
                       + f": F1 of a threshold chosen on the other folds {nested['mean']:.3f} {nested['ci95']}")
    result["thresholds"], result["threshold_choice"] = thresholds, how
    result["odd_answers"] = odd_answers(prepared, logits, thresholds)
    add_catalog_metrics(result, labelled, logits, GZ2, set(SHARED_SETS))
    return result


def ring_check(prepared: Prepared, logits: dict[str, dict[str, np.ndarray]], folds: int = 5,
               seed: int = 0, prevalence: float | None = None) -> dict[str, Any] | None:
    """Ring AUC and flag threshold by k-fold CV over every ring galaxy the model never trained on.

    The validation and test rings pooled (validation only chose the epoch) are cut into stratified
    folds: the AUC per fold (mean with a t interval) and pooled (bootstrap interval), and the F1
    of a threshold chosen on the other folds, scored on each fold; with ``prevalence`` the F1s are
    weighted to that survey rate of rings. :func:`score` ships the threshold chosen this way.
    """
    y, score_ = [], []
    for split in ("val", "test"):
        part = prepared.by_name(split).get("gzdecals_rings")
        if part is not None:
            y.append(part.labelled.table["ring"].to_numpy(int))
            score_.append(columns(logits[split]["gzdecals_rings"])["odd_ring_prob"])
    if not y or min(np.bincount(np.concatenate(y), minlength=2)) < folds:
        return None
    y, score_ = np.concatenate(y), np.concatenate(score_)
    fold = np.zeros(len(y), int)
    for i, idx in enumerate(fold_indices(y.astype(str), folds, seed)):
        fold[idx] = i
    stat = auc_statistic(y, score_)
    return {"n": int(len(y)), "n_positive": int(y.sum()), "folds": folds,
            "auc_pooled": stat(np.arange(len(y))), "auc_pooled_ci95": bootstrap_ci(stat, len(y), y),
            "auc_over_folds": mean_interval([stat(np.flatnonzero(fold == i)) for i in range(folds)]),
            "threshold": threshold_by_cv(y, score_, fold, prevalence)}


def evaluate(model: torch.nn.Module, prepared: Prepared, run_dir: Path, pictures: bool = True) -> dict[str, Any]:
    """Score ``model`` on every split; writes ``metrics.json`` (and pictures) into ``run_dir``."""
    run_dir = Path(run_dir)
    logits = {split: {p.name: predict(model, p.images) for p in parts} for split, parts in prepared.splits.items()}
    result = score(prepared, logits)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    if pictures and prepared.tree.name == GZ2.name:
        draw(model, prepared, logits["test"], result["splits"]["test"], run_dir / "pictures")
    elif pictures and (run_dir / "history.json").exists():
        plots.training_curves(json.loads((run_dir / "history.json").read_text()),
                              run_dir / "pictures" / "training_curves.png")
    return result


def draw(model: torch.nn.Module, prepared: Prepared, logits: dict[str, np.ndarray],
         test: dict[str, dict[str, Any]], folder: Path) -> None:
    test_sets = prepared.by_name("test")
    history = Path(folder).parent / "history.json"
    if history.exists():
        plots.training_curves(json.loads(history.read_text()), folder / "training_curves.png")
    if "gz1_sdss" in test and "three_way_confusion" in test["gz1_sdss"]:
        plots.confusion(test["gz1_sdss"]["three_way_confusion"], list(THREE_WAY), folder / "confusion_gz1_three_way.png",
                        f"gz1_sdss test: accuracy {test['gz1_sdss']['three_way_accuracy']:.3f}")
    curves = {}
    for name, key, score_of, label_of in [
        ("gz1_sdss", "merger", lambda c: c["odd_merger_prob"], lambda t: t["class_name"] == "merger"),
        ("gz_kaggle_spiral", "spiral", spiral_probability, lambda t: t["label"] == "spiral"),
        ("gzdecals_rings", "ring", lambda c: c["odd_ring_prob"], lambda t: t["ring"] == 1),
    ]:
        if name in test_sets:
            y = label_of(test_sets[name].labelled.table).to_numpy(int)
            if 0 < y.sum() < len(y):
                s = score_of(columns(logits[name]))
                fpr, tpr = roc_points(y, s)
                curves[f"{name} {key}"] = (fpr, tpr, float(np.trapezoid(tpr, fpr)))
    if curves:
        plots.roc_curves(curves, folder / "roc_test.png")
    for name, items in confident_mistakes(test_sets, logits).items():
        plots.mosaic(items, folder / f"mistakes_{name}.png", title=f"{name} test: the surest mistakes")
    chosen = chosen_galaxies(test_sets, logits)
    if chosen:
        plots.feature_maps(model, chosen[0][1], folder / "feature_maps.png")
        items = []
        for title, image, answer in chosen:
            idx = GZ2.answer_index(*answer)

            def score(batch: np.ndarray, idx: int = idx) -> np.ndarray:
                return GZ2.unconditional(GZ2.softmax_by_question(predict(model, batch)))[:, idx]

            items.append((title, image, plots.occlusion_map(score, image)))
        plots.occlusion_panel(items, folder / "occlusion_maps.png")


def chosen_galaxies(test_sets: dict, logits: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, tuple[str, str]]]:
    """A few test galaxies per class, each with the answer whose evidence the occlusion map shows."""
    out = []
    picks = [("gz1_sdss", "class_name", "spiral_clockwise", ("has_spiral_arms", "yes")),
             ("gz1_sdss", "class_name", "edge_on", ("disk_edge_on", "yes")),
             ("gz1_sdss", "class_name", "elliptical", ("smooth_or_featured", "smooth")),
             ("gz1_sdss", "class_name", "merger", ("odd_feature", "merger")),
             ("gzdecals_rings", "ring", 1, ("odd_feature", "ring"))]
    for name, column, value, answer in picks:
        if name not in test_sets:
            continue
        table = test_sets[name].labelled.table
        rows = np.flatnonzero(table[column].to_numpy() == value)
        if len(rows):
            i = int(rows[0])
            out.append((f"{name} {value}: {answer[0]}={answer[1]}", test_sets[name].images[i], answer))
    return out


def confident_mistakes(test_sets: dict, logits: dict[str, np.ndarray], count: int = 18) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per test set, the ``count`` galaxies the model is surest about and wrong on, with captions.

    GZ1: wrong three-way calls by the probability of the call, then the mergers with the lowest
    merger probability; Kaggle spiral and rings: labels against the score's rank (a ring at the
    bottom of the ranking, a non-ring at the top); GZ2 votes: the largest RMSE over the tree.
    """
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, part in test_sets.items():
        c, table, images = columns(logits[name]), part.labelled.table, part.images
        if name == "gz1_sdss":
            classes = table["class_name"].to_numpy(str)
            p = three_way_scores(c)
            pred = p.argmax(axis=1)
            label = np.array([GZ1_THREE_WAY.get(k, -1) for k in classes])
            wrong = np.flatnonzero((label >= 0) & (pred != label))
            worst = wrong[np.argsort(-p[wrong, pred[wrong]])][:count]
            out[name] = [(f"{classes[i]}\ncalled {THREE_WAY[pred[i]]} {p[i, pred[i]]:.2f}", images[i]) for i in worst]
            mergers = np.flatnonzero(classes == "merger")
            missed = mergers[np.argsort(c["odd_merger_prob"][mergers])][:count // 3]
            out["gz1_sdss_mergers"] = [(f"merger\nP(merger) {c['odd_merger_prob'][i]:.2f}", images[i]) for i in missed]
            continue
        if name in ("gz_kaggle_spiral", "gzdecals_rings"):
            y = (table["label"].to_numpy(str) == "spiral") if name == "gz_kaggle_spiral" else table["ring"].to_numpy(int) == 1
            score = spiral_probability(c) if name == "gz_kaggle_spiral" else c["odd_ring_prob"]
            rank = score.argsort().argsort() / max(1, len(score) - 1)
            wrongness = np.where(y, 1 - rank, rank)
            worst = np.argsort(-wrongness)[:count]
            what = "spiral" if name == "gz_kaggle_spiral" else "ring"
            out[name] = [(f"{'' if y[i] else 'not '}{what}\nscore {score[i]:.2f} (rank {rank[i]:.2f})", images[i])
                         for i in worst]
        elif name == "gz2_votes":
            truth = GZ2.unconditional(np.nan_to_num(part.labelled.targets, nan=0.0))
            pred = GZ2.unconditional(GZ2.softmax_by_question(logits[name].astype(np.float32)))
            err = np.sqrt(((truth - pred) ** 2).mean(axis=1))
            worst = np.argsort(-err)[:count]
            out[name] = [(f"{table['gz2_class'].iloc[i]}\nRMSE {err[i]:.2f}", images[i]) for i in worst]
    return out


def score_onnx(path: Path | str, prepared: Prepared) -> dict[str, Any]:
    """:func:`score` for an exported ONNX model (onnxruntime logits on every split)."""
    from galaxy_infer.model import Predictor

    predictor = Predictor(path, batch_size=256, num_threads=2)
    return score(prepared, {split: {p.name: predictor.predict(p.images) for p in parts}
                            for split, parts in prepared.splits.items()})


def main(argv: list[str] | None = None) -> int:
    from training.config import load_config
    from training.train import prepare

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the TOML config whose splits to score")
    parser.add_argument("--model", required=True, help="an exported ONNX model")
    parser.add_argument("--out", required=True, help="where to write the metrics JSON")
    args = parser.parse_args(argv)
    result = score_onnx(args.model, prepare(load_config(args.config)))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["floors_on_test"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
