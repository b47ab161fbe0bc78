"""Survey augmentations, bootstrap intervals, cross-validation folds and survey shifts (issue 17)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import augment as A  # noqa: E402
from training.config import SurveyAugment, from_dict  # noqa: E402
from training.experiments.compare import paired, verdict  # noqa: E402
from training.experiments.crossval import dihedral_ring_score, fold_split, paired_out_of_fold  # noqa: E402
from training.experiments.robustness import SHIFTS  # noqa: E402
from training.folds import fold_indices, mean_interval, threshold_by_cv  # noqa: E402
from training.metrics import auc_statistic, bootstrap_ci  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(2)


def _galaxies(n: int = 6, size: int = 32) -> torch.Tensor:
    """Dark sky with a bright, coloured, elongated blob in the middle (values in [0, 1])."""
    y, x = torch.meshgrid(torch.arange(size) - size / 2 + 0.5, torch.arange(size) - size / 2 + 0.5, indexing="ij")
    blob = torch.exp(-(x**2 / 30 + y**2 / 8))
    colour = torch.tensor([0.9, 0.6, 0.3])[:, None, None]
    return (0.05 + 0.9 * colour * blob).expand(n, 3, size, size).contiguous()


# --- the survey operations -----------------------------------------------------------------

def test_grey_renders_one_band_or_a_mix_in_every_channel():
    x = torch.rand(4, 3, 16, 16)
    one = A.grey(x, torch.tensor([[0.0, 1.0, 0.0]]).expand(4, -1))
    assert torch.equal(one[:, 0], x[:, 1]) and torch.equal(one[:, 2], x[:, 1])
    mix = A.grey(x, torch.full((4, 3), 1 / 3))
    torch.testing.assert_close(mix[:, 0], x.mean(dim=1))


def test_psf_blur_keeps_flux_spreads_light_and_is_identity_at_zero():
    x = _galaxies(3)
    torch.testing.assert_close(A.psf_blur(x, torch.zeros(3)), x)
    y = A.psf_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(y.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-3, atol=1e-3)
    peaks = y.amax(dim=(1, 2, 3))
    assert peaks[0] > peaks[1] > peaks[2]


def test_dim_and_gains_and_noise():
    x = _galaxies(2)
    sky = A.border_level(x)
    torch.testing.assert_close(sky.squeeze(), torch.full((2, 3), 0.05), atol=1e-3, rtol=0)
    fainter = A.dim(x, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(fainter[0], x[0])
    torch.testing.assert_close(fainter[1] - 0.05, (x[1] - 0.05) * 0.5, atol=1e-6, rtol=0)
    redder = A.band_gains(x, torch.tensor([[2.0, 1.0, 0.5]]).expand(2, -1))
    assert redder.max() <= 1.0 and torch.equal(redder[:, 1], x[:, 1])
    g = torch.Generator().manual_seed(0)
    noisy = A.add_noise(torch.full((2, 3, 64, 64), 0.5), torch.tensor([0.0, 0.05]), g)
    assert torch.equal(noisy[0], torch.full((3, 64, 64), 0.5))
    assert abs(float(noisy[1].std()) - 0.05) < 0.005


def test_rescale_shrinks_the_galaxy_onto_its_own_sky():
    x = _galaxies(1)
    torch.testing.assert_close(A.rescale(x, 1.0), x, atol=1e-5, rtol=0)
    small = A.rescale(x, 0.5)
    assert abs(float(small[0, :, 0, 0].mean()) - 0.05) < 1e-3  # corners: sky level, no mirrored galaxy
    excess = lambda im: float((im - 0.05).clamp(min=0).sum())  # noqa: E731
    assert 0.2 < excess(small) / excess(x) < 0.3  # a quarter of the area


def test_survey_augment_is_seeded_bounded_and_off_by_default():
    x = torch.rand(16, 3, 32, 32)
    assert not SurveyAugment().enabled()
    config = SurveyAugment(p=1.0, grey=0.5, colour=0.2, blur=1.5, noise=0.05, dim=0.3)
    a = A.survey_augment(x, config, torch.Generator().manual_seed(3))
    b = A.survey_augment(x, config, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    greys = (a[:, 0] == a[:, 1]).all(dim=(1, 2)) & (a[:, 1] == a[:, 2]).all(dim=(1, 2))
    assert 0 < int(greys.sum()) < 16  # grey samples keep identical channels, noise included
    framed = A.random_affine(x, 1.0, generator=torch.Generator().manual_seed(0), zoom_range=(0.5, 1.6))
    assert framed.shape == x.shape and framed.min() >= -1e-6 and framed.max() <= 1 + 1e-6


def test_config_reads_the_augment_section():
    config = from_dict({"augment": {"grey": 0.2, "framing": [0.5, 1.6]}})
    assert config.augment.grey == 0.2 and config.augment.framing == (0.5, 1.6) and config.augment.enabled()
    with pytest.raises(ValueError, match="unknown"):
        from_dict({"augment": {"fog": 1}})


def test_every_survey_shift_keeps_shape_and_range():
    x = _galaxies(2)
    for name, shift in SHIFTS.items():
        y = shift(x)
        assert y.shape == x.shape and float(y.min()) >= -1e-6 and float(y.max()) <= 1 + 1e-6, name


# --- intervals and folds -------------------------------------------------------------------

def test_bootstrap_interval_holds_the_value_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def interval(n: int) -> tuple[float, list[float]]:
        y = np.arange(n) % 2
        score = y + rng.normal(0, 1.0, n)
        stat = auc_statistic(y, score)
        return stat(np.arange(n)), bootstrap_ci(stat, n, y, n_boot=300)

    small_value, small = interval(60)
    big_value, big = interval(2000)
    assert small[0] <= small_value <= small[1] and big[0] <= big_value <= big[1]
    assert big[1] - big[0] < (small[1] - small[0]) / 3
    assert bootstrap_ci(lambda i: float(i.mean()), 1) is None


def test_stratified_bootstrap_keeps_the_number_of_positives():
    y = np.array([1] * 3 + [0] * 47)  # a plain resample often has fewer or none
    positives = lambda i: float(y[i].sum())  # noqa: E731
    assert bootstrap_ci(positives, 50, y, n_boot=200) == [3.0, 3.0]
    plain = bootstrap_ci(positives, 50, None, n_boot=200)
    assert plain[0] < 3 < plain[1]


def test_paired_difference_sees_what_separate_intervals_cannot():
    # two models ranking the same 80 galaxies, the candidate a little better on each: separate
    # intervals overlap, the paired interval of the difference does not reach 0
    rng = np.random.default_rng(1)
    y = np.arange(80) % 2
    base = y + rng.normal(0, 1.0, 80)
    candidate = base + 0.25 * y
    a, b = (auc_statistic(y, base), 80, y), (auc_statistic(y, candidate), 80, y)
    lo_a, hi_a = bootstrap_ci(a[0], 80, y, n_boot=300)
    lo_b, _ = bootstrap_ci(b[0], 80, y, n_boot=300)
    assert lo_b < hi_a
    figure = paired(a, b, n_boot=300, seed=0)
    assert figure["difference"] == pytest.approx(figure["candidate"] - figure["base"]) and figure["difference"] > 0
    assert figure["ci95"][0] > 0 and verdict("ring_auc", figure) == "better"
    assert verdict("rmse_ratio", figure) == "worse"  # a larger ratio is worse
    same = paired(a, a, n_boot=50, seed=0)
    assert same["ci95"] == [0.0, 0.0] and verdict("ring_auc", same) == "same"


def test_two_cross_validations_are_paired_on_the_same_out_of_fold_galaxies():
    rng = np.random.default_rng(1)
    y = (np.arange(120) % 2).tolist()
    fold = (np.arange(120) % 3).tolist()
    base_score = np.asarray(y) + rng.normal(0, 1.0, 120)
    base = {"out_of_fold": {"gzdecals_rings": {"y": y, "fold": fold, "score": base_score.tolist()}}}
    better = {"out_of_fold": {"gzdecals_rings": {"y": y, "fold": fold,
                                                 "score": (base_score + 0.5 * np.asarray(y)).tolist()}}}
    figure = paired_out_of_fold(base, better, n_boot=200)
    assert figure["n"] == 120 and figure["difference"] > 0 and figure["ci95"][0] > 0
    assert figure["ensemble"]["base"] == figure["base"] and figure["ensemble"]["difference"] > 0
    alone = paired_out_of_fold(base, base, n_boot=50)["ensemble"]
    assert alone["difference"] == pytest.approx(0)
    other_folds = {"out_of_fold": {"gzdecals_rings": {**better["out_of_fold"]["gzdecals_rings"], "fold": fold[::-1]}}}
    with pytest.raises(ValueError, match="different galaxies"):
        paired_out_of_fold(base, other_folds)


def test_the_test_time_average_is_the_same_for_any_rotation_or_flip_of_the_input():
    from training.config import Config
    from training.train import make_model

    torch.manual_seed(0)
    model = make_model(Config()).eval()
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    score = dihedral_ring_score(model, x)
    assert score.shape == (4,) and np.all((score >= 0) & (score <= 1))
    for turned in (np.rot90(x, 1, axes=(2, 3)), x[..., ::-1], np.rot90(x[..., ::-1], 3, axes=(2, 3))):
        np.testing.assert_allclose(dihedral_ring_score(model, np.ascontiguousarray(turned)), score, rtol=1e-4, atol=1e-6)


def test_folds_partition_the_set_stratified_and_hold_validation_apart():
    strata = np.array(["1"] * 185 + ["0"] * 185)
    folds = fold_indices(strata, 5, seed=0)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(370))
    assert all(abs((strata[f] == "1").mean() - 0.5) < 0.03 for f in folds)
    split = fold_split(strata, folds[2], seed=0, val=0.1875)
    parts = [set(split[s]) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == 370 and abs(len(parts[1]) - 56) <= 1


def test_mean_interval_and_threshold_by_cross_validation():
    summary = mean_interval([0.8, 0.7, 0.9, 0.75, 0.85])
    assert summary["mean"] == pytest.approx(0.8) and summary["ci95"][0] < 0.8 < summary["ci95"][1]
    assert summary["ci95"][1] - 0.8 == pytest.approx(2.776 * np.std([0.8, 0.7, 0.9, 0.75, 0.85], ddof=1) / np.sqrt(5), rel=1e-3)
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 100)
    score = np.where(y == 1, rng.uniform(0.4, 1.0, 200), rng.uniform(0.0, 0.5, 200))
    chosen = threshold_by_cv(y, score, np.arange(200) % 5)
    assert 0.35 < chosen["threshold"] < 0.55 and chosen["f1_pooled"] > 0.9
    assert len(chosen["f1_nested_by_fold"]) == 5 and chosen["f1_nested"]["mean"] > 0.85


def test_an_exported_compact_model_loads_back_for_fine_tuning(tmp_path):
    from galaxy_infer.preprocess import Recipe
    from galaxy_infer.schema import ODD_FEATURES
    from training.config import Config
    from training.export import export_onnx
    from training.experiments.finetune import load_exported_compact
    from training.models import build_model
    from training.train import predict

    model = build_model("compact")
    for m in model.modules():  # non-trivial BatchNorm, so the folded weights differ from the trained ones
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    path = export_onnx(model.eval(), tmp_path / "m.onnx", Recipe(), "t", "0", {f: 0.5 for f in ODD_FEATURES})
    x = torch.rand(4, 3, 64, 64).numpy()
    loaded = load_exported_compact(path, Config())
    assert np.abs(predict(loaded, x) - predict(model, x)).max() < 1e-4
