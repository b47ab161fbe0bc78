"""Model logits -> catalog columns: tree-consistent fractions, reach probabilities, odd features."""
from __future__ import annotations

import numpy as np

from galaxy_infer.schema import GZ2, ODD_FEATURES, Schema


def odd_feature_probabilities(fractions: np.ndarray, asked: np.ndarray, schema: Schema = GZ2) -> dict[str, np.ndarray]:
    """``odd_proportion_asked * odd_yes_fraction * odd_feature_{f}_fraction`` for each feature."""
    q_odd = [q.name for q in schema.questions].index("odd")
    odd_yes = asked[:, q_odd] * fractions[:, schema.answer_index("odd", "yes")]
    return {f: odd_yes * fractions[:, schema.answer_index("odd_feature", f)] for f in ODD_FEATURES}


def postprocess(logits: np.ndarray, thresholds: dict[str, float], schema: Schema = GZ2) -> dict[str, np.ndarray]:
    """Catalog prediction columns for ``(n, n_answers)`` logits, named as the contract names them."""
    fractions = schema.softmax_by_question(logits.astype(np.float32, copy=False))
    asked = schema.proportion_asked(fractions)
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(schema.answer_columns):
        columns[name] = fractions[:, i]
    for i, name in enumerate(schema.asked_columns):
        columns[name] = asked[:, i]
    for feature, prob in odd_feature_probabilities(fractions, asked, schema).items():
        columns[f"odd_{feature}_prob"] = prob.astype(np.float32)
        columns[f"odd_{feature}_flag"] = prob >= thresholds[feature]
    return columns
