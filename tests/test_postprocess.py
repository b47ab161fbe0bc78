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
