"""Training on another tree: a GZ DESI vote table of real cutouts -> train -> export -> classify."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from galaxy_infer.cli import main as galaxy_infer_main  # noqa: E402
from galaxy_infer.model import load_model_info  # noqa: E402
from galaxy_infer.trees import GZ_DESI  # noqa: E402
from training.cli import main as training_main  # noqa: E402
from training.config import Config, override  # noqa: E402
from training.train import make_model, read_sets  # noqa: E402

pytestmark = pytest.mark.torch


def desi_votes(rings: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """Zoobot-style vote counts on the GZ DESI tree for ``n`` real GZ DECaLS ring cutouts: the first,
    edge-on and spiral questions from the set's three real fractions (40 volunteers, each question
    asked of those who chose its parent answer); ``merging`` made up (seeded, merger the majority
    answer for about half); every other question left out (unknown)."""
    table = pd.read_csv(rings / "labels.csv").sample(n, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    featured = np.round(40 * table["smooth-or-featured_featured-or-disk_fraction"]).astype(int)
    face_on = np.round(featured * table["disk-edge-on_no_fraction"]).astype(int)
    no_arms = np.round(face_on * table["has-spiral-arms_no_fraction"]).astype(int)
    merger = np.where(rng.random(n) < 0.5, rng.integers(25, 40, n), rng.integers(0, 10, n))
    return pd.DataFrame({
        "file": [str(rings / f) for f in table["file"]],
        "smooth-or-featured_smooth": 40 - featured, "smooth-or-featured_featured-or-disk": featured,
        "smooth-or-featured_artifact": 0,
        "disk-edge-on_yes": featured - face_on, "disk-edge-on_no": face_on,
        "has-spiral-arms_yes": face_on - no_arms, "has-spiral-arms_no": no_arms,
        "merging_none": 40 - merger, "merging_minor-disturbance": 0, "merging_major-disturbance": 0,
        "merging_merger": merger,
    })


def test_model_outputs_follow_the_tree_and_gz2_sets_are_refused_elsewhere():
    desi = override(Config(), data={"tree": "gz_desi", "sets": []})
    assert make_model(desi)(torch.rand(2, 3, 64, 64)).shape == (2, GZ_DESI.n_answers)
    with pytest.raises(ValueError, match=r"cannot be read on tree gz_desi.*gzdecals_rings"):
        read_sets(override(Config(), data={"tree": "gz_desi"}))
    with pytest.raises(ValueError, match="needs 'path'"):
        read_sets(override(desi, data={"catalogs": [{"file": "x.csv"}]}))


def test_two_catalogs_of_one_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        pd.DataFrame({"file": ["x.jpg"], "merging_merger": [3], "merging_none": [1],
                      "merging_minor-disturbance": [0], "merging_major-disturbance": [0]}).to_csv(
            tmp_path / folder / "votes.csv", index=False)
    config = override(Config(), data={"tree": "gz_desi", "sets": [],
                                      "catalogs": [{"path": str(tmp_path / f / "votes.csv")} for f in "ab"]})
    with pytest.raises(ValueError, match="share a name"):
        read_sets(config)
    named = [{"path": str(tmp_path / f / "votes.csv"), "name": f} for f in "ab"]
    assert [s.name for s in read_sets(override(config, data={"catalogs": named}))] == ["a", "b"]


@pytest.mark.ray
@pytest.mark.shared_data
def test_desi_tree_from_a_vote_table_trains_exports_and_classifies(shared_data, local_ray, tmp_path):
    votes = desi_votes(shared_data / "gzdecals_rings", 80)
    votes.to_csv(tmp_path / "desi_votes.csv", index=False)
    config = tmp_path / "desi.toml"
    onnx = tmp_path / "desi.onnx"
    config.write_text(f'[data]\ntree = "gz_desi"\nsets = []\ncache_dir = ""\n[model]\nwidth = 4\n'
                      f'[train]\nepochs = 1\nbatch_size = 16\n'
                      f'[output]\nrun_dir = "{tmp_path / "run"}"\nonnx = "{onnx}"\nname = "desi-mini"\n')
    assert training_main(["train", "--config", str(config), "--labels", str(tmp_path / "desi_votes.csv"),
                          "--no-pictures"]) == 0
    info = load_model_info(onnx)
    assert info.tree is GZ_DESI and [f.name for f in info.flags] == ["merger", "major_disturbance"]
    assert info.extra["threshold_choice"]["merger"].startswith("max F1 on validation")
    assert info.extra["threshold_choice"]["major_disturbance"].startswith("default 0.5")
    test = info.extra["metrics"]["test"]["desi_votes"]
    assert set(test["questions"]) == {"smooth_or_featured", "disk_edge_on", "has_spiral_arms", "merging"}
    assert {"accuracy", "rmse", "rmse_train_mean", "accuracy_train_majority"} <= set(test["questions"]["merging"])
    assert "auc" in test["flags"]["merger"]
    assert info.extra["training_data"]["catalogs"] == [{"path": str(tmp_path / "desi_votes.csv")}]
    # export again from the checkpoint: the same tree and thresholds
    assert training_main(["export", "--config", str(config), "--labels", str(tmp_path / "desi_votes.csv"),
                          "--output", str(tmp_path / "again.onnx")]) == 0
    again = load_model_info(tmp_path / "again.onnx")
    assert again.tree is GZ_DESI and again.thresholds == info.thresholds

    files = list(votes["file"][:6])
    assert galaxy_infer_main(["classify", *files, "--out", str(tmp_path / "cat"), "--model", str(onnx)]) == 0
    table = pq.read_table(tmp_path / "cat")
    names = table.column_names
    assert set(GZ_DESI.answer_columns) | set(GZ_DESI.asked_columns) <= set(names)
    assert {"merger_prob", "merger_flag", "major_disturbance_prob", "major_disturbance_flag"} <= set(names)
    assert not any(n.startswith("odd_") for n in names)
    assert json.loads(table.schema.metadata[b"galaxy_infer.tree"]) == "gz_desi"
    prob = table.column("merger_prob").to_numpy()
    np.testing.assert_array_equal(table.column("merger_flag").to_numpy(zero_copy_only=False),
                                  prob >= info.thresholds["merger"])
