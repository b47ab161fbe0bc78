"""What the ring labels allow without a CNN: a model-free baseline for ring AUC targets.

A ring is an azimuthally symmetric excess of light around the centre, so the azimuthal mean
profile (log flux against the centre's) and each annulus' scatter between sectors carry most of
what the pixels say about it. A logistic regression on those, cross-validated over the ring set,
says how much ring AUC these labels give to a simple, resolution-independent description; the
same regression on each annulus' colours says how much of the labels colour alone gives; stacked
on a ``training.experiments.crossval`` run's out-of-fold CNN scores it says whether the two see different things,
and each description is paired with those CNN scores on the same galaxies.

``python -m training.experiments.ring_probe --config C [--cv runs/cv/cv.json] [--input-size 128] [--folds 5]``
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from galaxy_infer.preprocess import LUMA
from training.config import Config, load_config
from training.experiments.crossval import fold_indices, paired_ring_auc
from training.data import cached_inputs
from training.metrics import auc_statistic, bootstrap_ci

RING_SET = "gzdecals_rings"


@functools.lru_cache(maxsize=8)
def _cells(size: int, annuli: int, sectors: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's annulus about the centre (corners: label ``annuli``) and sector; one map per size."""
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    annulus = np.minimum((np.hypot(yy, xx) / (size / 2) * annuli).astype(int), annuli)
    sector = ((np.arctan2(yy, xx) + np.pi) / (2 * np.pi) * sectors).astype(int) % sectors
    return annulus, sector


def profile_features(image: np.ndarray, annuli: int = 16, sectors: int = 16) -> np.ndarray:
    """Log azimuthal-mean profile relative to the centre, its slope, and each annulus' sector scatter.

    ``image`` is one preprocessed ``(channels, size, size)`` input; its luminance is used.
    """
    grey = np.tensordot(LUMA, image, axes=1) if image.shape[0] == 3 else image[0]
    annulus, sector = _cells(grey.shape[0], annuli, sectors)
    index = np.arange(annuli)
    profile = np.asarray(ndimage.mean(grey, annulus, index))
    with np.errstate(invalid="ignore"):  # central cells can hold no pixel: NaN, left out of the scatter
        cells = np.asarray(ndimage.mean(grey, annulus * sectors + sector,
                                        (index[:, None] * sectors + np.arange(sectors)).ravel())).reshape(annuli, sectors)
    log_profile = np.log(profile + 1e-3)
    return np.concatenate([log_profile - log_profile[0], np.diff(log_profile), np.nanstd(cells, axis=1) / (profile + 1e-3)])


def colour_features(image: np.ndarray, annuli: int = 16) -> np.ndarray:
    """Each annulus' colours, log band ratios (first/second, second/third), of a 3-band input.

    Absolute colours: they describe one survey's rendering, so what they add to the ring AUC here
    says how much the ring set's labels go with colour rather than with shape.
    """
    annulus, _ = _cells(image.shape[-1], annuli, 1)
    bands = np.log(np.stack([ndimage.mean(band, annulus, np.arange(annuli)) for band in image]) + 1e-3)
    return np.concatenate([bands[0] - bands[1], bands[1] - bands[2]])


def _scored(y: np.ndarray, score: np.ndarray, n_boot: int) -> dict[str, Any]:
    stat = auc_statistic(y, score)
    return {"auc": stat(np.arange(len(y))), "ci95": bootstrap_ci(stat, len(y), y, n_boot), "n": int(len(y))}


def _cnn_out_of_fold(cv_json: Path, strata: np.ndarray, seed: int) -> np.ndarray:
    """A crossval run's out-of-fold ring probabilities, back in the ring set's row order."""
    run = json.loads(Path(cv_json).read_text())
    oof = run["out_of_fold"][RING_SET]
    order = np.concatenate(fold_indices(strata, run["folds"], seed))
    score = np.empty(len(order))
    score[order] = oof["score"]
    return score


def probe(config: Config, cv_json: Path | None = None, input_size: int = 128, folds: int = 5,
          repeats: int = 3, n_boot: int = 1000) -> dict[str, Any]:
    """Cross-validated ring AUC of the profile baseline (and stacked on the CNN's out-of-fold scores)."""
    from training.train import read_sets

    rings = next(s for s in read_sets(config) if s.name == RING_SET)
    y = rings.table["ring"].to_numpy(int)
    recipe = dataclasses.replace(config.recipe, input_size=input_size)
    images = cached_inputs(rings, recipe, None)
    features = np.stack([profile_features(x) for x in images])
    colours = np.stack([colour_features(x) for x in images])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    columns = {"profile": features, "colour": colours, "profile+colour": np.column_stack([features, colours])}
    if cv_json is not None:
        cnn = _cnn_out_of_fold(cv_json, rings.strata, config.data.seed)
        clipped = np.clip(cnn, 1e-4, 1 - 1e-4)
        logit = np.log(clipped / (1 - clipped))
        columns["profile+cnn"] = np.column_stack([features, logit])
        columns["profile+colour+cnn"] = np.column_stack([features, colours, logit])
    out: dict[str, Any] = {"n": int(len(y)), "n_positive": int(y.sum()), "input_size": input_size, "folds": folds}
    if cv_json is not None:
        out["cnn_out_of_fold"] = _scored(y, cnn, n_boot)
    for name, x in columns.items():
        runs = [cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                  method="predict_proba")[:, 1] for seed in range(repeats)]
        out[name] = _scored(y, runs[0], n_boot) | {"auc_by_repeat": [auc_statistic(y, r)(np.arange(len(y))) for r in runs]}
        if cv_json is not None:
            out[name]["paired_with_cnn"] = paired_ring_auc(y, cnn, runs[0], n_boot)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.ring_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="training/configs/default.toml")
    parser.add_argument("--cv", type=Path, help="a training.experiments.crossval cv.json whose out-of-fold ring scores to stack")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(probe(load_config(args.config), args.cv, args.input_size, args.folds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
