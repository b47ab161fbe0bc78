"""Tree-generic training pieces without torch: vote catalogs, reach, per-question metrics, flag thresholds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galaxy_infer.schema import GZ2
from galaxy_infer.trees import GZ_DESI, GZ_EUCLID
from training import labels as L
from training import tree_metrics as M

IDX = GZ_DESI.answer_index


def _targets(rows: list[dict[tuple[str, str], float]], tree=GZ_DESI) -> np.ndarray:
    t = np.full((len(rows), tree.n_answers), np.nan, np.float32)
    for i, row in enumerate(rows):
        for (q, a), v in row.items():
            t[i, tree.slices[q]] = np.where(np.isnan(t[i, tree.slices[q]]), 0.0, t[i, tree.slices[q]])
            t[i, tree.answer_index(q, a)] = v
    return t


def test_vote_catalog_reads_counts_paths_and_strata(tmp_path):
    (tmp_path / "img").mkdir()
    table = pd.DataFrame({"file_loc": ["img/a.jpg", "/abs/b.jpg", "img/c.jpg"],
                          "smooth-or-featured_smooth": [30, 2, np.nan],
                          "smooth-or-featured_featured-or-disk": [10, 38, np.nan],
                          "smooth-or-featured_artifact": [0, 0, np.nan],
                          "merging_merger_fraction": [0.1, 0.6, 0.9], "merging_none_fraction": [0.9, 0.4, 0.1],
                          "merging_minor-disturbance_fraction": [0, 0, 0],
                          "merging_major-disturbance_fraction": [0, 0, 0]})
    table.to_csv(tmp_path / "votes.csv", index=False)
    s = L.read_vote_catalog(tmp_path / "votes.csv", GZ_DESI, file_column="file_loc")
    assert s.name == "votes" and s.tree is GZ_DESI and s.targets.shape == (3, 34) and s.negated.shape == (3, 34)
    assert s.paths == [str(tmp_path / "img/a.jpg"), "/abs/b.jpg", str(tmp_path / "img/c.jpg")]
    np.testing.assert_allclose(s.targets[0, GZ_DESI.slices["smooth_or_featured"]], [0.75, 0.25, 0])
    assert list(s.strata) == ["smooth", "featured_or_disk", "unknown"]
    assert s.subset(np.array([1])).tree is GZ_DESI
    with pytest.raises(ValueError, match="'file' column"):
        L.read_vote_catalog(tmp_path / "votes.csv", GZ_DESI)
    with pytest.raises(ValueError, match="no question of tree gz_euclid has votes"):
        pd.DataFrame({"file": ["a.jpg"], "bar_yes": [3]}).to_csv(tmp_path / "other.csv", index=False)
        L.read_vote_catalog(tmp_path / "other.csv", GZ_EUCLID)


@pytest.mark.shared_data
def test_decals_rings_read_natively_on_the_desi_tree(shared_data):
    s = L.TREE_SETS["gz_desi"]["gzdecals_rings"](shared_data / "gzdecals_rings")
    assert s.tree is GZ_DESI and len(s) == 370
    np.testing.assert_allclose(s.targets[:, IDX("smooth_or_featured", "featured_or_disk")],
                               s.table["smooth-or-featured_featured-or-disk_fraction"], rtol=1e-6)
    np.testing.assert_allclose(s.targets[:, IDX("has_spiral_arms", "yes")],
                               1 - s.table["has-spiral-arms_no_fraction"], rtol=1e-5)
    assert np.isnan(s.targets[:, GZ_DESI.slices["merging"]]).all() and np.isnan(s.targets[:, GZ_DESI.slices["bar"]]).all()


def test_reach_follows_the_tree_and_stops_at_zero():
    t = _targets([{("smooth_or_featured", "featured_or_disk"): 0.8, ("smooth_or_featured", "smooth"): 0.2,
                   ("disk_edge_on", "no"): 0.5, ("disk_edge_on", "yes"): 0.5},
                  {("smooth_or_featured", "smooth"): 1.0, ("smooth_or_featured", "featured_or_disk"): 0.0},
                  {("has_spiral_arms", "yes"): 1.0, ("has_spiral_arms", "no"): 0.0}])
    names = [q.name for q in GZ_DESI.questions]
    r = M.reach(t, GZ_DESI)
    assert r[0, names.index("has_spiral_arms")] == pytest.approx(0.4)
    assert r[1, names.index("spiral_winding")] == 0  # unknown below a path already at 0
    assert np.isnan(r[2, names.index("spiral_winding")]) and r[2, names.index("merging")] == 1
    assert M.reach(t, GZ_DESI, unknown=1.0)[2, names.index("spiral_winding")] == 1


def test_question_metrics_and_flag_auc_against_the_training_mean():
    rng = np.random.default_rng(0)
    n = 40
    merger = rng.random(n)
    rows = [{("merging", "merger"): m, ("merging", "none"): 1 - m, ("merging", "minor_disturbance"): 0.0,
             ("merging", "major_disturbance"): 0.0} for m in merger]
    targets = _targets(rows)
    logits = np.zeros((n, GZ_DESI.n_answers), np.float32)
    logits[:, IDX("merging", "merger")] = np.log(merger + 1e-3)
    logits[:, IDX("merging", "none")] = np.log(1 - merger + 1e-3)
    logits[:, IDX("merging", "minor_disturbance")] = logits[:, IDX("merging", "major_disturbance")] = -9
    labelled = L.LabelledSet("x", ["f"] * n, targets, np.zeros_like(targets), np.zeros(n, str), pd.DataFrame(index=range(n)),
                             GZ_DESI)
    m = M.tree_set_metrics(labelled, logits, GZ_DESI, M.mean_targets(labelled))
    assert set(m["questions"]) == {"merging"}
    q = m["questions"]["merging"]
    assert q["n"] == n and q["accuracy"] == 1.0 and q["rmse"] < 0.01 and q["rmse_ratio"] < 0.05
    assert 0 < q["accuracy_train_majority"] < 1
    assert m["flags"]["merger"]["auc"] == 1.0 and m["flags"]["merger"]["n_positive"] == int((merger >= 0.5).sum())
    assert m["flags"]["major_disturbance"]["auc"] is None  # no positive
    thresholds, how = M.choose_flag_thresholds({"x": (labelled, logits)}, GZ_DESI)
    assert how["merger"].startswith("max F1") and 0.3 < thresholds["merger"] < 0.7
    assert how["major_disturbance"].startswith("default") and thresholds["major_disturbance"] == 0.5


def test_gz2_label_catalogs_get_question_figures_and_fill_default_thresholds():
    rng = np.random.default_rng(1)
    n = 30
    fractions = GZ2.softmax_by_question(rng.normal(size=(n, GZ2.n_answers)).astype(np.float32))
    fractions[:, GZ2.slices["odd"]] = [[1.0, 0.0]] * n
    ring = (np.arange(n) % 2).astype(np.float32)
    fractions[:, GZ2.slices["odd_feature"]] = 0.0
    fractions[:, GZ2.answer_index("odd_feature", "ring")] = ring
    fractions[:, GZ2.answer_index("odd_feature", "other")] = 1 - ring
    mine = L.LabelledSet("mine", ["f"] * n, fractions, np.zeros_like(fractions), np.zeros(n, str),
                         pd.DataFrame(index=range(n)))
    logits = np.log(fractions + 1e-4)
    result = {"splits": {s: {"mine": {"n": n}} for s in ("train", "val")},
              "thresholds": {"ring": 0.5, "merger": 0.2},
              "threshold_choice": {"ring": "default 0.5 (...)", "merger": "max F1 on validation (...)"}}
    parts = {s: [mine] for s in ("train", "val")}
    M.add_catalog_metrics(result, parts, {s: {"mine": logits} for s in parts}, GZ2, {"gz1_sdss"})
    assert result["splits"]["val"]["mine"]["questions"]["smooth_or_featured"]["accuracy"] == 1.0
    assert result["threshold_choice"]["ring"].startswith("max F1") and result["thresholds"]["merger"] == 0.2


def test_gz1_classes_on_the_desi_tree_label_the_merger_flag_both_ways():
    classes = pd.Series(["elliptical", "merger", "edge_on", "dont_know"])
    t, neg = L.targets_from_classes(classes, L.GZ1_CLASSES_DESI, L.GZ1_NEGATIONS_DESI, GZ_DESI)
    assert t.shape == neg.shape == (4, 34)
    assert t[0, IDX("smooth_or_featured", "smooth")] == 1 and t[1, IDX("merging", "merger")] == 1
    merger, disturbance = GZ_DESI.flags
    np.testing.assert_array_equal(M.flag_truth(t, merger, GZ_DESI, neg), [0.0, 1.0, 0.0, np.nan])
    assert np.isnan(M.flag_truth(t, disturbance, GZ_DESI, neg)[[0, 2, 3]]).all()
