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


def test_built_in_trees_have_the_published_sizes_and_zoobot_names():
    from galaxy_infer.trees import GZ_DESI, GZ_EUCLID

    assert (len(GZ_DESI.questions), GZ_DESI.n_answers) == (10, 34)
    assert (len(GZ_EUCLID.questions), GZ_EUCLID.n_answers) == (13, 46)
    assert GZ_DESI.question("merging").answer_names == ("none", "minor_disturbance", "major_disturbance", "merger")
    assert GZ_EUCLID.question("artifact").asked_after == ("problem", "artifact")
    assert GZ_DESI.original_columns["spiral_arm_count_more_than_4_fraction"] == "spiral-arm-count_more-than-4_fraction"
    assert GZ_DESI.original_columns["has_spiral_arms_proportion_asked"] == "has-spiral-arms_proportion_asked"


def test_trees_round_trip_through_json_and_refuse_bad_dependencies():
    import json

    import pytest

    from galaxy_infer.schema import Schema
    from galaxy_infer.trees import TREES, from_zoobot, resolve_tree, tree_reference

    for tree in TREES.values():
        assert Schema.from_dict(json.loads(json.dumps(tree.to_dict()))) == tree
        assert resolve_tree(tree_reference(tree)) == tree
    custom = from_zoobot("mine", {"ring": ["yes", "no"], "ring-type": ["inner", "outer"]},
                         {"ring": None, "ring-type": "ring_yes"})
    assert tree_reference(custom)["questions"][1]["asked_after"] == ["ring", "yes"]
    assert resolve_tree(None) == GZ2
    with pytest.raises(ValueError, match="not an answer of an earlier question"):
        from_zoobot("bad", {"a": ["x"], "b": ["y"]}, {"a": "b_y", "b": None})


def test_proportion_asked_follows_any_tree():
    from galaxy_infer.trees import GZ_EUCLID as T

    fractions = T.softmax_by_question(np.random.default_rng(3).normal(size=(4, T.n_answers)))
    asked = T.proportion_asked(fractions)
    names = [q.name for q in T.questions]
    problem = fractions[:, T.answer_index("smooth_or_featured", "problem")]
    artifact = fractions[:, T.answer_index("problem", "artifact")]
    np.testing.assert_allclose(asked[:, names.index("artifact")], problem * artifact, rtol=1e-6)
    np.testing.assert_allclose(asked[:, names.index("merging")], 1.0)
