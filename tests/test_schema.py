import numpy as np

from galaxy_infer.schema import GZ2, ODD_FEATURES


def test_tree_has_the_contracts_11_questions_and_37_answers():
    assert len(GZ2.questions) == 11
    assert GZ2.n_answers == 37
    assert GZ2.answer_columns[0] == "smooth_or_featured_smooth_fraction"
    assert GZ2.question("odd_feature").answer_names == ODD_FEATURES


def test_kaggle_and_hart_names_follow_the_contract():
    assert GZ2.kaggle_columns[:3] == ("Class1.1", "Class1.2", "Class1.3")
    assert GZ2.kaggle_columns[-1] == "Class11.6"
    assert GZ2.hart_columns[0] == "t01_smooth_or_features_a01_smooth"
    assert "t08_odd_feature_a38_dust_lane" in GZ2.hart_columns
    assert GZ2.hart_columns[-1] == "t11_arms_number_a37_cant_tell"


def test_fractions_sum_to_one_per_question():
    logits = np.random.default_rng(0).normal(size=(5, GZ2.n_answers)).astype(np.float32)
    fractions = GZ2.softmax_by_question(logits)
    for s in GZ2.slices.values():
        np.testing.assert_allclose(fractions[:, s].sum(axis=1), 1.0, rtol=1e-6)


def test_proportion_asked_multiplies_down_the_path():
    fractions = GZ2.softmax_by_question(np.random.default_rng(1).normal(size=(3, GZ2.n_answers)))
    asked = GZ2.proportion_asked(fractions)
    names = [q.name for q in GZ2.questions]
    featured = fractions[:, GZ2.answer_index("smooth_or_featured", "featured_or_disk")]
    not_edge = fractions[:, GZ2.answer_index("disk_edge_on", "no")]
    spiral = fractions[:, GZ2.answer_index("has_spiral_arms", "yes")]
    np.testing.assert_allclose(asked[:, names.index("smooth_or_featured")], 1.0)
    np.testing.assert_allclose(asked[:, names.index("spiral_winding")], featured * not_edge * spiral, rtol=1e-6)
    star = fractions[:, GZ2.answer_index("smooth_or_featured", "star_or_artifact")]
    np.testing.assert_allclose(asked[:, names.index("odd")], 1 - star, rtol=1e-6)


def test_unconditional_round_trips_to_conditional():
    fractions = GZ2.softmax_by_question(np.random.default_rng(2).normal(size=(4, GZ2.n_answers)))
    back = GZ2.conditional_from_unconditional(GZ2.unconditional(fractions))
    np.testing.assert_allclose(back, fractions, rtol=1e-5)
