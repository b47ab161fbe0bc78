"""Training: label mapping, tree loss, augmentation, models, export parity, preprocessing identity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from galaxy_infer.model import load_model_info  # noqa: E402
from galaxy_infer.pipeline import read_and_preprocess  # noqa: E402
from galaxy_infer.preprocess import Recipe  # noqa: E402
from galaxy_infer.schema import GZ2, ODD_FEATURES  # noqa: E402
from galaxy_infer.synthetic import write_sample  # noqa: E402
from training import labels as L  # noqa: E402
from training.augment import random_affine  # noqa: E402
from training.config import Config, override  # noqa: E402
from training.data import cached_inputs, load_input, split_indices  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.loss import question_weights, tree_loss  # noqa: E402
from training.models import REGISTRY, build_model  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(2)
IDX = GZ2.answer_index


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


# --- labels ---------------------------------------------------------------------------------

def test_class_labels_map_onto_the_tree_with_masks_and_negations():
    labels = pd.Series(["elliptical", "spiral_clockwise", "edge_on", "merger", "dont_know"])
    t, neg = L.targets_from_classes(labels, L.GZ1_CLASSES, L.GZ1_NEGATIONS)
    assert t[0, IDX("smooth_or_featured", "smooth")] == 1 and np.isnan(t[0, GZ2.slices["disk_edge_on"]]).all()
    assert t[1, IDX("disk_edge_on", "no")] == 1 and t[1, IDX("has_spiral_arms", "yes")] == 1
    assert t[2, IDX("disk_edge_on", "yes")] == 1 and np.isnan(t[2, GZ2.slices["has_spiral_arms"]]).all()
    assert t[3, IDX("odd", "yes")] == 1 and t[3, IDX("odd_feature", "merger")] == 1
    assert np.isnan(t[3, GZ2.slices["smooth_or_featured"]]).all()
    assert np.isnan(t[4]).all() and not neg[4].any()
    assert neg[0, IDX("odd_feature", "merger")] == 1 and neg[0].sum() == 1  # 'not a merger', odd or not
    assert not neg[3].any()


def test_kaggle_columns_are_turned_back_into_conditional_fractions():
    rng = np.random.default_rng(0)
    conditional = GZ2.softmax_by_question(rng.normal(size=(5, GZ2.n_answers)).astype(np.float32))
    table = pd.DataFrame(GZ2.unconditional(conditional), columns=list(GZ2.kaggle_columns))
    np.testing.assert_allclose(L.targets_from_kaggle(table), conditional, atol=1e-5)


def test_hart_fractions_and_answer_columns_forms():
    rng = np.random.default_rng(1)
    conditional = GZ2.softmax_by_question(rng.normal(size=(3, GZ2.n_answers)).astype(np.float32))
    hart = pd.DataFrame(conditional * 1.1, columns=[c + "_debiased" for c in GZ2.hart_columns])
    np.testing.assert_allclose(L.targets_from_hart(hart), conditional, atol=1e-5)  # renormalised
    ours = pd.DataFrame(conditional[:, :5], columns=list(GZ2.answer_columns[:5]))
    t = L.targets_from_fractions(ours)
    np.testing.assert_allclose(t[:, :5], conditional[:, :5], atol=1e-5)
    assert np.isnan(t[:, 5:]).all()
    answers = pd.DataFrame({"smooth_or_featured": ["smooth", ""], "bar": [None, "yes"]})
    t = L.targets_from_answer_columns(answers)
    assert t[0, IDX("smooth_or_featured", "smooth")] == 1 and np.isnan(t[0, GZ2.slices["bar"]]).all()
    assert t[1, IDX("bar", "yes")] == 1 and np.isnan(t[1, GZ2.slices["smooth_or_featured"]]).all()


@pytest.mark.shared_data
def test_shared_sets_read_as_their_readme_says(shared_data):
    gz1 = L.read_gz1(shared_data / "gz1_sdss")
    assert "dont_know" not in set(gz1.table["class_name"]) and len(gz1) == 5665 - 48
    kaggle = L.read_kaggle_spiral(shared_data / "gz_kaggle_spiral")
    non = kaggle.table["label"].to_numpy() == "non_spiral"
    assert np.isnan(kaggle.targets[non]).all() and (kaggle.negated[non].sum(1) == 4).all()
    assert (kaggle.targets[~non][:, IDX("odd", "yes")] == 1).all()
    gz2 = L.read_gz2_votes(shared_data / "gz2_votes")
    for s in GZ2.slices.values():
        sums = gz2.targets[:, s].sum(1)
        assert np.allclose(sums[np.isfinite(sums)], 1, atol=1e-5)
    rings = L.read_decals_rings(shared_data / "gzdecals_rings")
    ring = rings.table["ring"].to_numpy() == 1
    assert (rings.targets[ring][:, IDX("odd_feature", "ring")] == 1).all()
    assert np.isnan(rings.targets[~ring][:, GZ2.slices["odd_feature"]]).all()
    assert (rings.negated[~ring][:, IDX("odd_feature", "ring")] == 1).all() and (rings.negated[~ring].sum(1) == 1).all()
    np.testing.assert_allclose(rings.targets[:, IDX("smooth_or_featured", "featured_or_disk")],
                               rings.table["smooth-or-featured_featured-or-disk_fraction"], rtol=1e-6)


def test_splits_are_seeded_stratified_and_disjoint():
    strata = np.array(["a"] * 80 + ["b"] * 20)
    s1, s2 = split_indices(strata, seed=3), split_indices(strata, seed=3)
    assert all((s1[k] == s2[k]).all() for k in s1)
    assert sorted(np.concatenate(list(s1.values()))) == list(range(100))
    assert (strata[s1["test"]] == "b").sum() == 3 and (strata[s1["val"]] == "b").sum() == 3


# --- loss -----------------------------------------------------------------------------------

def test_loss_ignores_questions_a_sample_says_nothing_about():
    logits = torch.randn(2, GZ2.n_answers, requires_grad=True)
    targets = torch.from_numpy(np.stack([L.answers_row({"smooth_or_featured": "smooth"})] * 2))
    tree_loss(logits, targets).backward()
    grad = logits.grad.abs().sum(0)
    assert grad[GZ2.slices["smooth_or_featured"]].sum() > 0
    assert grad[GZ2.slices["smooth_or_featured"].stop:].sum() == 0
    all_nan = torch.full((2, GZ2.n_answers), float("nan"))
    assert tree_loss(logits.detach(), all_nan).item() == 0.0


def test_loss_weights_questions_by_how_often_they_were_reached():
    t = np.full((1, GZ2.n_answers), np.nan, np.float32)
    t[0, GZ2.slices["smooth_or_featured"]] = [0.2, 0.7, 0.1]
    t[0, GZ2.slices["disk_edge_on"]] = [0.25, 0.75]
    w = question_weights(torch.from_numpy(t))[0]
    names = [q.name for q in GZ2.questions]
    assert w[names.index("disk_edge_on")] == pytest.approx(0.7)
    assert w[names.index("bar")] == pytest.approx(0.7 * 0.75)
    assert w[names.index("odd")] == pytest.approx(0.9)
    assert w[names.index("how_rounded")] == pytest.approx(0.2)


def test_negated_event_pushes_its_probability_down():
    negated = torch.from_numpy(L.event_row(L.MERGER)[None])
    empty = torch.full((1, GZ2.n_answers), float("nan"))
    logits = torch.zeros(1, GZ2.n_answers)
    likely = logits.clone()
    likely[0, IDX("odd", "yes")] = 5
    likely[0, IDX("odd_feature", "merger")] = 5
    assert tree_loss(likely, empty, negated).item() > tree_loss(logits, empty, negated).item() > 0
    assert torch.isfinite(tree_loss(likely * 100, empty, negated))


# --- augmentation and models -------------------------------------------------------------

def test_augmentation_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(6, 3, 64, 64)
    a = random_affine(x, 1.0, generator=torch.Generator().manual_seed(0))
    b = random_affine(x, 1.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6
    assert not torch.allclose(a, x)
    c = random_affine(x, 0.0, generator=torch.Generator().manual_seed(1))
    assert c.shape == x.shape and torch.allclose(c.sum(dim=(2, 3)), x.sum(dim=(2, 3)), atol=1e-3)


def test_exact_augmentation_moves_pixels_without_resampling():
    x = torch.rand(8, 3, 64, 64)
    y = random_affine(x, 1.0, generator=torch.Generator().manual_seed(2), exact_fraction=1.0)
    for i in range(8):
        candidates = [torch.rot90(v, k, (1, 2)) for v in (x[i], x[i].flip(2)) for k in range(4)]
        assert any(torch.allclose(y[i], t, atol=1e-5) for t in candidates)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_builds_every_model_with_37_logits(name):
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, GZ2.n_answers)


def test_registry_refuses_unknown_names():
    with pytest.raises(KeyError, match="unknown model"):
        build_model("vgg99")


# --- export, parity, preprocessing identity ------------------------------------------------

def _cutouts(shared: Path | None, tmp_path: Path) -> list[str]:
    if shared is not None:
        return [str(p) for p in sorted((shared / "gz1_sdss" / "images").glob("*.jpg"))[:8]] + \
               [str(p) for p in sorted((shared / "gz2_votes" / "images").glob("*.jpg"))[:4]]
    return [str(p) for p in write_sample(tmp_path / "synthetic", n=6) if p.suffix == ".jpg"]


@pytest.fixture
def cutouts(request, tmp_path) -> list[str]:
    from tests.conftest import SHARED_DATA

    return _cutouts(SHARED_DATA if SHARED_DATA.is_dir() else None, tmp_path)


def test_onnx_matches_pytorch_on_cutouts(cutouts, tmp_path):
    recipe = Recipe()
    model = build_model("compact")
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = np.stack([load_input(p, recipe) for p in cutouts])
    path = export_onnx(model, tmp_path / "m.onnx", recipe, "parity", "0", {f: 0.5 for f in ODD_FEATURES})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = _ort_logits(path, x)
    assert np.abs(got - expected).max() < 1e-4
    assert load_model_info(path).input_shape == [3, 64, 64]


def test_int8_quantization_keeps_the_graph_interface_and_tracks_the_float_model(cutouts, tmp_path):
    import onnx

    from training.quantize import quantize_int8

    recipe = Recipe()
    torch.manual_seed(0)
    model = build_model("compact").eval()
    x = np.stack([load_input(p, recipe) for p in cutouts])
    fp32 = export_onnx(model, tmp_path / "m.onnx", recipe, "q", "0", {f: 0.5 for f in ODD_FEATURES})
    int8 = quantize_int8(fp32, tmp_path / "m8.onnx", x)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert load_model_info(int8).input_shape == [3, 64, 64]
    a, b = _ort_logits(fp32, x), _ort_logits(int8, x)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_training_and_inference_preprocess_identically(cutouts, tmp_path):
    recipe = Recipe()
    labelled = L.LabelledSet("x", cutouts, L.empty_targets(len(cutouts)), np.zeros((len(cutouts), 37), np.float32),
                             np.zeros(len(cutouts), str), pd.DataFrame({"file": cutouts}))
    training_path = cached_inputs(labelled, recipe, tmp_path / "cache")
    again = cached_inputs(labelled, recipe, tmp_path / "cache")  # from the .npy cache
    batch = {"object_id": np.array(cutouts, dtype=object), "source_path": np.array(cutouts, dtype=object),
             "ra": np.full(len(cutouts), np.nan), "dec": np.full(len(cutouts), np.nan)}
    inference = read_and_preprocess(batch, recipe)
    assert (inference["error"] == "").all()
    assert np.array_equal(training_path, inference["pixels"]) and np.array_equal(again, training_path)


def test_runs_sharing_a_cache_fill_it_at_once(cutouts, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    recipe = Recipe()
    labelled = L.LabelledSet("x", cutouts, L.empty_targets(len(cutouts)), np.zeros((len(cutouts), 37), np.float32),
                             np.zeros(len(cutouts), str), pd.DataFrame({"file": cutouts}))
    for attempt in range(5):  # writers finishing together collided on one temporary file name
        cache = tmp_path / str(attempt)
        with ThreadPoolExecutor(8) as pool:
            filled = list(pool.map(lambda _: cached_inputs(labelled, recipe, cache), range(8)))
        assert all(np.array_equal(f, filled[0]) for f in filled)
        assert len(list(cache.iterdir())) == 1
        assert np.array_equal(cached_inputs(labelled, recipe, cache), filled[0])


@pytest.mark.shared_data
def test_mini_train_evaluate_export_round_trip(shared_data, tmp_path):
    from training.cli import main

    run = tmp_path / "run"
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nroot = "{shared_data}"\nlimit = 60\ncache_dir = ""\n'
                      f'oversample = {{ gz2_votes = 2 }}\n[train]\nepochs = 1\nbatch_size = 32\n'
                      f'[output]\nrun_dir = "{run}"\nonnx = "{tmp_path / "m.onnx"}"\nname = "mini"\n'
                      f'int8_onnx = "{tmp_path / "m8.onnx"}"\n')
    assert main(["train", "--config", str(config), "--no-pictures"]) == 0
    assert (run / "best.pt").exists() and (run / "last.pt").exists() and (run / "metrics.json").exists()
    info = load_model_info(tmp_path / "m.onnx")
    assert info.name == "mini" and set(info.thresholds) == set(ODD_FEATURES)
    assert {"metrics", "training_data", "versions", "architecture"} <= set(info.extra)
    assert info.extra["training_data"]["sets"]["gz1_sdss"]["train"] > 0
    int8 = load_model_info(tmp_path / "m8.onnx")
    assert int8.name == "mini-int8" and int8.extra["precision"] == "int8" and (run / "metrics_int8.json").exists()
    assert int8.extra["quantization"]["quantized_from"]["sha256"] == info.sha256
    # resume picks up the finished run without training again, then one more epoch when asked
    assert main(["train", "--config", str(config), "--no-pictures", "--resume", "--epochs", "2", "--no-export"]) == 0
    import json
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2]


@pytest.mark.shared_data
def test_mini_cross_validation_and_its_test_time_rescoring(shared_data, tmp_path):
    """Every ring is held out once; rescoring the saved fold models rebuilds the same folds."""
    from training.experiments.crossval import main as crossval

    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nroot = "{shared_data}"\nlimit = 60\ncache_dir = ""\n'
                      f'sets = ["gz1_sdss", "gz2_votes", "gzdecals_rings"]\n[train]\nepochs = 1\nbatch_size = 32\n')
    run = tmp_path / "cv"
    assert crossval(["--config", str(config), "--folds", "2", "--seed", "3", "--threads", "1", "--run-dir", str(run)]) == 0
    import json
    result = json.loads((run / "cv.json").read_text())
    assert (result["config"]["train"]["seed"], result["config"]["train"]["threads"]) == (3, 1)
    rings = result["out_of_fold"]["gzdecals_rings"]
    assert len(rings["y"]) == 60 and sorted(set(rings["fold"])) == [0, 1]
    assert {"gzdecals_rings.ring_auc", "gz2_votes.rmse_ratio"} <= set(result["over_folds"])
    from training.config import load_config, override
    from training.experiments.crossval import rescore_with_tta

    rescored = rescore_with_tta(override(load_config(config), output={"run_dir": str(run)}), folds=2, n_boot=50)
    assert rescored["base"] == pytest.approx(result["pooled_out_of_fold"]["gzdecals_rings.ring_auc"]["value"])
    assert 0 <= rescored["candidate"] <= 1 and rescored["n"] == 60


def test_config_rejects_unknown_keys(tmp_path):
    from training.config import load_config

    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        load_config(bad)
    assert override(Config(), train={"lr": 1.0}).train.lr == 1.0
    assert load_config(Path(__file__).parents[1] / "training/configs/default.toml").output.onnx.endswith("default.onnx")


def test_a_config_with_a_base_changes_only_the_keys_it_names(tmp_path):
    from dataclasses import replace

    from training.config import load_config

    (tmp_path / "base.toml").write_text('[data]\nseed = 3\nsets = ["gz1_sdss"]\n[train]\nlr = 0.5\nepochs = 7\n')
    (tmp_path / "candidate.toml").write_text('base = "base.toml"\n[train]\nlr = 0.25\n')
    config = load_config(tmp_path / "candidate.toml")
    assert (config.data.seed, config.data.sets, config.train.lr, config.train.epochs) == (3, ["gz1_sdss"], 0.25, 7)
    configs = Path(__file__).parents[1] / "training/configs"
    default, candidate = load_config(configs / "default.toml"), load_config(configs / "odd-decals.toml")
    assert candidate.data.odd_rates == {**default.data.odd_rates, "gzdecals_rings": {"0": "S"}}
    assert (candidate.model, candidate.recipe, candidate.augment) == (default.model, default.recipe, default.augment)
    no_colour = load_config(configs / "no-colour-aug.toml")
    assert (no_colour.data, no_colour.train, no_colour.model) == (default.data, default.train, default.model)
    assert no_colour.augment == replace(default.augment, grey=0.0, colour=0.0)


def test_zoobot_style_counts_and_fractions_become_targets_on_any_tree():
    from galaxy_infer.trees import GZ_DESI
    from training.labels import targets_from_zoobot_columns

    counts = pd.DataFrame({"smooth-or-featured_smooth": [3, 0], "smooth-or-featured_featured-or-disk": [1, 0],
                           "smooth-or-featured_artifact": [0, 0], "merging_merger_fraction": [0.2, 0.5],
                           "merging_none_fraction": [0.8, 0.5], "merging_minor_disturbance": [0, 0],
                           "merging_major_disturbance": [0, 0]})
    t = targets_from_zoobot_columns(counts, GZ_DESI)
    assert t.shape == (2, 34)
    np.testing.assert_allclose(t[0, GZ_DESI.slices["smooth_or_featured"]], [0.75, 0.25, 0.0])
    assert np.isnan(t[1, GZ_DESI.slices["smooth_or_featured"]]).all()
    np.testing.assert_allclose(t[:, GZ_DESI.answer_index("merging", "merger")], [0.2, 0.5])
    assert np.isnan(t[:, GZ_DESI.slices["bar"]]).all()


@pytest.mark.shared_data
def test_an_ablation_trains_without_one_operation_and_pairs_it_with_the_recipe(shared_data, tmp_path):
    """The variant writes only under its run folder; its comparison covers every shift."""
    import json

    from training.experiments.ablate import main as ablate
    from training.experiments.ablate import summary
    from training.cli import main as cli
    from training.experiments.robustness import SHIFTS

    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nroot = "{shared_data}"\nlimit = 60\ncache_dir = ""\n'
                      f'sets = ["gz1_sdss", "gz2_votes", "gzdecals_rings"]\n[train]\nepochs = 1\nbatch_size = 32\n'
                      f'[output]\nonnx = "{tmp_path / "shipped.onnx"}"\n[augment]\ngrey = 0.2\n')
    assert cli(["train", "--config", str(config), "--run-dir", str(tmp_path / "full"), "--no-pictures"]) == 0
    base = tmp_path / "shipped.onnx"
    shipped = base.read_bytes()
    root = tmp_path / "ablate"
    assert ablate(["--config", str(config), "--base", str(base), "--op", "grey", "--threads", "1",
                   "--run-root", str(root), "--n-boot", "20"]) == 0
    assert base.read_bytes() == shipped
    result = json.loads((root / "no-grey" / "compare.json").read_text())
    assert result["off"] == {"grey": 0.0} and set(result["shifts"]) == set(SHIFTS)
    variant = load_model_info(root / "no-grey" / "model.onnx")
    assert variant.version.endswith("-no-grey")
    assert variant.extra["training"]["config"]["augment"]["grey"] == 0.0
    assert variant.extra["training"]["config"]["train"]["threads"] == 1
    assert [r.split(" | ")[0] for r in summary(root).splitlines()[2:]] == ["| grey"]
