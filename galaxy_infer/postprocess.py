"""Model outputs -> catalog columns: tree-consistent fractions, reach probabilities, flags.

Two kinds of output head: ``logits`` (a per-question softmax gives the fractions) and Zoobot's
``dirichlet`` concentrations (one positive value per answer; the expected fraction is the
answer's concentration over the sum of its question's). For Dirichlet models the catalog can
also carry the concentrations and a 90% interval per answer, from the Beta marginal
``Beta(c_a, sum(c) - c_a)`` of each answer's fraction.
"""
from __future__ import annotations

import numpy as np

from galaxy_infer.schema import GZ2, ODD_FEATURES, Flag, Schema

OUTPUT_KINDS = ("logits", "dirichlet")
INTERVAL = (0.05, 0.95)
"""Quantiles of the per-answer interval columns (a central 90% interval)."""


def odd_feature_probabilities(fractions: np.ndarray, asked: np.ndarray, schema: Schema = GZ2) -> dict[str, np.ndarray]:
    """``odd_proportion_asked * odd_yes_fraction * odd_feature_{f}_fraction`` for each feature."""
    q_odd = [q.name for q in schema.questions].index("odd")
    odd_yes = asked[:, q_odd] * fractions[:, schema.answer_index("odd", "yes")]
    return {f: odd_yes * fractions[:, schema.answer_index("odd_feature", f)] for f in ODD_FEATURES}


def dirichlet_fractions(concentrations: np.ndarray, schema: Schema) -> np.ndarray:
    """Expected vote fractions: each concentration over the sum of its question's."""
    c = concentrations.astype(np.float32, copy=False)
    out = np.empty_like(c)
    for s in schema.slices.values():
        out[:, s] = c[:, s] / c[:, s].sum(axis=1, keepdims=True)
    return out


def dirichlet_intervals(concentrations: np.ndarray, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper :data:`INTERVAL` quantiles of each answer's fraction (its Beta marginal)."""
    from scipy.stats import beta

    c = concentrations.astype(np.float64, copy=False)
    rest = np.empty_like(c)
    for s in schema.slices.values():
        rest[:, s] = c[:, s].sum(axis=1, keepdims=True) - c[:, s]
    return (beta.ppf(INTERVAL[0], c, rest).astype(np.float32), beta.ppf(INTERVAL[1], c, rest).astype(np.float32))


def flag_probability(fractions: np.ndarray, asked: np.ndarray, flag: Flag, schema: Schema) -> np.ndarray:
    """Summed unconditional probability of the flag's answers."""
    prob = schema.unconditional_answer(fractions, asked, *flag.answers[0])
    for question, answer in flag.answers[1:]:
        prob = prob + schema.unconditional_answer(fractions, asked, question, answer)
    return prob


def postprocess(outputs: np.ndarray, thresholds: dict[str, float], schema: Schema = GZ2,
                flags: tuple[Flag, ...] | None = None, kind: str = "logits",
                intervals: bool = False) -> dict[str, np.ndarray]:
    """Catalog prediction columns for ``(n, n_answers)`` model outputs, named as the contract names them.

    ``flags`` default to the tree's own with ``thresholds`` (by flag name); ``intervals`` adds,
    for Dirichlet outputs, ``{q}_{a}_concentration`` and the ``_fraction_q05``/``_q95`` columns.
    """
    if kind == "logits":
        fractions = schema.softmax_by_question(outputs.astype(np.float32, copy=False))
    elif kind == "dirichlet":
        fractions = dirichlet_fractions(outputs, schema)
    else:
        raise ValueError(f"output kind must be one of {OUTPUT_KINDS}, not {kind!r}")
    asked = schema.proportion_asked(fractions)
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(schema.answer_columns):
        columns[name] = fractions[:, i]
    for i, name in enumerate(schema.asked_columns):
        columns[name] = asked[:, i]
    flags = schema.flags_with(thresholds) if flags is None else flags
    probs = {f.column: flag_probability(fractions, asked, f, schema).astype(np.float32) for f in flags}
    for f in flags:
        columns[f"{f.column}_prob"] = probs[f.column]
    for f in flags:
        columns[f"{f.column}_flag"] = probs[f.column] >= f.threshold
    if intervals and kind == "dirichlet":
        lo, hi = dirichlet_intervals(outputs, schema)
        for i, name in enumerate(schema.answer_columns):
            stem = name.removesuffix("_fraction")
            columns[f"{stem}_concentration"] = outputs[:, i].astype(np.float32)
            columns[f"{name}_q05"] = lo[:, i]
            columns[f"{name}_q95"] = hi[:, i]
    return columns
