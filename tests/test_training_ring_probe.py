"""The model-free ring baseline: profile and colour features on synthetic rings, the probe on the real ring set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from training.config import load_config, override  # noqa: E402
from training.experiments.ring_probe import RING_SET, colour_features, probe, profile_features  # noqa: E402
from training.folds import fold_indices  # noqa: E402

pytestmark = pytest.mark.torch

SIZE, ANNULI, RING_RADIUS = 64, 16, 21  # the ring in the middle of annulus 10 (radii 20 to 22)


def _galaxy(ring: float = 0.0, blob: float = 0.0) -> np.ndarray:
    yy, xx = np.indices((SIZE, SIZE)) - (SIZE - 1) / 2
    r = np.hypot(yy, xx)
    image = (np.exp(-r / 5) + ring * np.exp(-((r - RING_RADIUS) ** 2) / 4)
             + blob * np.exp(-((yy - RING_RADIUS) ** 2 + xx**2) / 4))
    return np.repeat(image[None].astype(np.float32), 3, axis=0)


def test_a_ring_is_a_rise_in_the_profile_and_a_lopsided_blob_a_scatter_between_sectors():
    disk, ringed, lopsided = (profile_features(_galaxy(**kw)) for kw in ({}, {"ring": 0.3}, {"blob": 0.3}))
    assert all(np.isfinite(f).all() and f.shape == (3 * ANNULI - 1,) for f in (disk, ringed, lopsided))
    slope = slice(ANNULI, 2 * ANNULI - 1)
    ring_annulus = RING_RADIUS * ANNULI // (SIZE // 2)
    assert (disk[slope] < 0).all()
    assert ringed[slope][ring_annulus - 1] > 0
    scatter = slice(2 * ANNULI - 1, None)
    assert ringed[scatter][ring_annulus] < 0.05
    assert lopsided[scatter][ring_annulus] > 10 * ringed[scatter][ring_annulus]


def test_colour_features_are_each_annulus_band_ratios():
    image = _galaxy()
    image[0] *= 2  # first band twice the second everywhere: log 2 in every annulus
    colours = colour_features(image, ANNULI)
    assert colours.shape == (2 * ANNULI,)
    np.testing.assert_allclose(colours[ANNULI:], 0, atol=1e-6)
    assert (colours[:ANNULI] > 0).all() and abs(colours[0] - np.log(2)) < 0.01


def test_the_probe_finds_ring_signal_and_stacks_out_of_fold_scores_in_row_order(shared_data, tmp_path):
    config = override(load_config(Path(__file__).parents[1] / "training/configs/default.toml"),
                      data={"root": str(shared_data)})
    from training.train import read_sets

    rings = next(s for s in read_sets(config) if s.name == RING_SET)
    held = fold_indices(rings.strata, 3, config.data.seed)
    y = rings.table["ring"].to_numpy(int)
    perfect = {"folds": 3, "out_of_fold": {RING_SET: {"score": np.concatenate([y[i] for i in held]).tolist()}}}
    (tmp_path / "cv.json").write_text(json.dumps(perfect))
    result = probe(config, tmp_path / "cv.json", input_size=64, folds=3, repeats=1, n_boot=20)
    assert result["n"] == 370 and result["n_positive"] == 185
    assert result["cnn_out_of_fold"]["auc"] == 1.0
    assert 0.65 < result["profile"]["auc"] < 0.9
    assert 0.65 < result["colour"]["auc"] < 0.9
    assert result["profile+cnn"]["auc"] > 0.95 and result["profile+colour+cnn"]["auc"] > 0.95
    paired = result["profile"]["paired_with_cnn"]
    assert paired["base"] == 1.0 and paired["difference"] == pytest.approx(result["profile"]["auc"] - 1.0)
