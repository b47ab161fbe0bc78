"""Volunteer population rates for 'odd' and flag thresholds weighted to a survey's prevalence."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from galaxy_infer.schema import GZ2  # noqa: E402
from training.data import SplitSet  # noqa: E402
from training.folds import threshold_by_cv  # noqa: E402
from training.labels import LabelledSet, empty_targets  # noqa: E402
from training.metrics import best_f1_threshold, prevalence_weights  # noqa: E402
from training.priors import ODD_YES, odd_answers, proportion_loss, sample_rates  # noqa: E402

pytestmark = pytest.mark.torch


def _part(name: str, strata: list[str], odd_yes: list[float] | None = None) -> SplitSet:
    targets = empty_targets(len(strata))
    if odd_yes is not None:
        targets[:, ODD_YES] = odd_yes
        targets[:, ODD_YES + 1] = 1 - np.asarray(odd_yes)
    labelled = LabelledSet(name, [f"{i}.jpg" for i in range(len(strata))], targets, np.zeros_like(targets),
                           np.asarray(strata), pd.DataFrame({"class": strata}))
    return SplitSet(labelled, np.zeros((len(strata), 3, 8, 8), np.float32))


def test_each_mapped_class_gets_the_volunteers_mean_odd_rate_of_its_gz2_class():
    gz2 = _part("gz2_votes", ["E", "E", "S", "S"], [0.1, 0.3, 0.5, 0.3])
    gz1 = _part("gz1_sdss", ["elliptical", "edge_on", "merger"])
    rates = sample_rates([gz1, gz2], {"gz1_sdss": {"elliptical": "E", "edge_on": "S"}})
    np.testing.assert_allclose(rates[0][:2], [0.2, 0.4], rtol=1e-6)
    assert np.isnan(rates[0][2]) and np.isnan(rates[1]).all()
    with pytest.raises(ValueError, match="no stratum 'X'"):
        sample_rates([gz1, gz2], {"gz1_sdss": {"elliptical": "X"}})
    with pytest.raises(ValueError, match="gz2_votes"):
        sample_rates([gz1], {"gz1_sdss": {"elliptical": "E"}})
    with pytest.raises(ValueError, match="gz1_sdss has no stratum 'spiral'"):
        sample_rates([gz1, gz2], {"gz1_sdss": {"spiral": "S"}})


def test_the_ring_sets_non_rings_get_the_featured_rate_and_its_rings_none():
    """The ring set's strata are its 0/1 labels; the odd-decals candidate holds its non-rings
    (featured face-on disks) to the GZ2 'S' rate, while its rings keep their own 'odd = yes' label."""
    from training.config import load_config

    mapping = load_config(Path(__file__).parents[1] / "training/configs/odd-decals.toml").data.odd_rates
    gz2 = _part("gz2_votes", ["E", "S", "S"], [0.1, 0.5, 0.3])
    rings = _part("gzdecals_rings", ["0", "1", "0"])
    rates = sample_rates([rings, gz2], {"gzdecals_rings": mapping["gzdecals_rings"]})
    np.testing.assert_allclose(rates[0][[0, 2]], 0.4, rtol=1e-6)
    assert np.isnan(rates[0][1])


def test_the_proportion_loss_moves_the_mean_not_each_galaxy_to_the_rate():
    torch.manual_seed(0)
    logits = torch.zeros(64, GZ2.n_answers)
    logits[:, GZ2.slices["odd"].start] = torch.linspace(4.0, 6.0, 64)  # every galaxy 'odd' at > 0.98
    logits.requires_grad_(True)
    rates = torch.full((64,), 0.2)
    rates[:8] = float("nan")
    optimiser = torch.optim.SGD([logits], lr=50.0)
    for _ in range(300):
        optimiser.zero_grad()
        proportion_loss(logits, rates).backward()
        optimiser.step()
    odd = torch.softmax(logits[8:, GZ2.slices["odd"]], dim=1)[:, 0].detach()
    assert odd.mean().item() == pytest.approx(0.2, abs=0.01)
    assert torch.all(odd[1:] >= odd[:-1])  # the ranking inside the set is kept
    assert logits.grad[:8].abs().sum() == 0
    assert proportion_loss(logits, torch.full((64,), float("nan"))).item() == 0


def test_prevalence_weights_make_positives_the_survey_share():
    y = np.array([1] * 50 + [0] * 50, bool)
    w = prevalence_weights(y, 0.04)
    assert w[y].sum() / w.sum() == pytest.approx(0.04)
    assert prevalence_weights(y, None) is None and prevalence_weights(np.ones(4, bool), 0.1) is None


def test_a_rare_feature_gets_a_purer_threshold_than_a_balanced_validation_set_suggests():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 200).astype(bool)
    score = np.where(y, rng.beta(4, 2, 400), rng.beta(2, 4, 400))
    balanced, _ = best_f1_threshold(y, score)
    rare, _ = best_f1_threshold(y, score, prevalence_weights(y, 0.04))
    assert rare > balanced + 0.15
    flagged_share = lambda t: 0.04 * (score[y] >= t).mean() + 0.96 * (score[~y] >= t).mean()  # noqa: E731
    assert flagged_share(rare) < flagged_share(balanced) / 3
    chosen = threshold_by_cv(y.astype(int), score, np.arange(400) % 5, prevalence=0.04)
    assert chosen["prevalence"] == 0.04 and chosen["threshold"] > balanced + 0.15
    assert 0 < chosen["f1_nested"]["mean"] < chosen["f1_pooled"] + 0.1


def test_odd_answers_are_reported_per_stratum_beside_the_volunteers_rate():
    from training.train import Prepared

    gz2 = _part("gz2_votes", ["E", "S"], [0.2, 0.4])
    rings = _part("gzdecals_rings", ["0", "0", "1"])
    prepared = Prepared({"train": [gz2], "val": [rings], "test": [rings]})
    logits = np.zeros((3, GZ2.n_answers), np.float32)
    logits[:, GZ2.slices["odd"].start] = [-4.0, 4.0, 4.0]  # P(odd = yes) 0.018, 0.982, 0.982
    answers = odd_answers(prepared, {"val": {"gzdecals_rings": logits}, "test": {"gzdecals_rings": logits}},
                          {"ring": 0.5, "merger": 0.5, "dust_lane": 0.5})
    assert answers["volunteer_rates"] == pytest.approx({"E": 0.2, "S": 0.4})
    non_rings, ring = answers["sets"]["gzdecals_rings"]["0"], answers["sets"]["gzdecals_rings"]["1"]
    assert non_rings["n"] == 4 and ring["n"] == 2
    assert non_rings["p_odd"] == pytest.approx(0.5, abs=0.01) and ring["p_odd"] > 0.98
    assert set(ring) == {"n", "p_odd", "ring_flag", "merger_flag"}
