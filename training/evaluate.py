"""Evaluate a trained model on every split: metrics JSON, thresholds and pictures in the run folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from galaxy_infer.schema import GZ2
from training import plots
from training.labels import SHARED_SETS
from training.metrics import (THREE_WAY, choose_thresholds, columns, roc_points,
                              set_metrics, spiral_probability)
from training.train import Prepared, predict
from training.tree_metrics import add_catalog_metrics, tree_score

FLOORS = {
    ("gz1_sdss", "three_way_accuracy"): (">=", 0.93),
    ("gz1_sdss", "merger_auc"): (">=", 0.85),
    ("gz_kaggle_spiral", "spiral_auc"): (">=", 0.88),
    ("gzdecals_rings", "ring_auc"): (">=", 0.80),
    ("gz2_votes", "rmse_ratio"): ("<=", 0.75),
}


def check_floors(test: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for (name, key), (op, floor) in FLOORS.items():
        value = test.get(name, {}).get(key)
        ok = None if value is None else (value >= floor if op == ">=" else value <= floor)
        out[f"{name}.{key}"] = {"value": value, "floor": f"{op} {floor}", "pass": ok}
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
    result["thresholds"], result["threshold_choice"] = choose_thresholds(val)
    result["floors_on_test"] = check_floors(result["splits"]["test"])
    add_catalog_metrics(result, labelled, logits, GZ2, set(SHARED_SETS))
    return result


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
