import numpy as np

from galaxy_infer.postprocess import postprocess
from galaxy_infer.schema import GZ2, ODD_FEATURES


def test_odd_feature_probability_and_flag_follow_the_contract():
    logits = np.random.default_rng(0).normal(size=(6, GZ2.n_answers)).astype(np.float32)
    thresholds = {f: 0.02 for f in ODD_FEATURES}
    cols = postprocess(logits, thresholds)
    for f in ODD_FEATURES:
        expected = (cols["odd_proportion_asked"] * cols["odd_yes_fraction"]
                    * cols[f"odd_feature_{f}_fraction"])
        np.testing.assert_allclose(cols[f"odd_{f}_prob"], expected, rtol=1e-6)
        np.testing.assert_array_equal(cols[f"odd_{f}_flag"], expected >= 0.02)
    assert set(GZ2.answer_columns) <= set(cols) and set(GZ2.asked_columns) <= set(cols)
    assert all(v.dtype in (np.float32, np.bool_) for v in cols.values())


def test_dirichlet_fractions_flags_and_beta_intervals():
    from scipy.stats import beta

    from galaxy_infer.trees import GZ_DESI as T

    c = np.random.default_rng(1).uniform(1, 101, size=(5, T.n_answers)).astype(np.float32)
    cols = postprocess(c, {"merger": 0.1, "major_disturbance": 0.2}, T, kind="dirichlet", intervals=True)
    s = T.slices["merging"]
    np.testing.assert_allclose(cols["merging_merger_fraction"], c[:, s][:, 3] / c[:, s].sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(cols["merger_prob"], cols["merging_merger_fraction"], rtol=1e-6)
    np.testing.assert_array_equal(cols["major_disturbance_flag"], cols["major_disturbance_prob"] >= 0.2)
    a, rest = c[:, s][:, 3], c[:, s].sum(axis=1) - c[:, s][:, 3]
    np.testing.assert_allclose(cols["merging_merger_fraction_q05"], beta.ppf(0.05, a, rest), rtol=1e-5)
    np.testing.assert_allclose(cols["merging_merger_fraction_q95"], beta.ppf(0.95, a, rest), rtol=1e-5)
    assert (cols["merging_merger_fraction_q05"] < cols["merging_merger_fraction"]).all()
    np.testing.assert_array_equal(cols["merging_merger_concentration"], c[:, s][:, 3])
    spiral = cols["disk_edge_on_proportion_asked"] * cols["disk_edge_on_no_fraction"]
    np.testing.assert_allclose(cols["has_spiral_arms_proportion_asked"], spiral, rtol=1e-6)


def test_a_flag_sums_the_unconditional_probabilities_of_its_answers():
    from galaxy_infer.schema import Flag
    from galaxy_infer.trees import GZ_CANDELS as T

    logits = np.random.default_rng(2).normal(size=(4, T.n_answers)).astype(np.float32)
    flag = Flag("bar_or_merger", (("bar", "yes"), ("merging", "merger")), threshold=0.3)
    cols = postprocess(logits, {}, T, (flag,))
    expected = cols["bar_proportion_asked"] * cols["bar_yes_fraction"] + cols["merging_merger_fraction"]
    np.testing.assert_allclose(cols["bar_or_merger_prob"], expected, rtol=1e-6)
    assert "merger_prob" not in cols
