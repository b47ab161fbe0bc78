"""One class per galaxy: the ten Galaxy10 DECaLS classes, derived from a catalog's vote fractions.

The rule. Each class is one or more paths through the decision tree; a path's score is the
product of the conditional vote fractions along it, i.e. the share of volunteers the model
expects to answer that way, so every score is a probability in [0, 1]. A class's score is the
sum over its paths. The label is the class with the highest score and the confidence is that
score. Merging and disturbed are the odd-feature paths (``odd = yes`` then the feature), so a
clear merger wins only when the model expects most volunteers to call it one.

For the Galaxy Zoo 2 tree of this catalog (:data:`GZ2_RULE`):

==========================  ==================================================================
class                       path (``question = answer`` x ...)
==========================  ==================================================================
disturbed                   odd asked x odd = yes x odd_feature = disturbed or irregular
merging                     odd asked x odd = yes x odd_feature = merger
round smooth                smooth x how_rounded = completely_round
in-between round smooth     smooth x how_rounded = in_between
cigar-shaped smooth         smooth x how_rounded = cigar_shaped
barred spiral               featured x edge-on = no x bar = yes x spiral arms = yes
unbarred tight spiral       featured x edge-on = no x bar = no x spiral arms = yes x winding = tight
unbarred loose spiral       featured x edge-on = no x bar = no x spiral arms = yes x winding = medium or loose
edge-on without bulge       featured x edge-on = yes x bulge_shape = no_bulge
edge-on with bulge          featured x edge-on = yes x bulge_shape = rounded or boxy
==========================  ==================================================================

GZ2 asks only tight / medium / loose, Galaxy10 only tight / loose: medium goes with loose.
Another tree (GZ DECaLS, Euclid) gives its own :class:`Rule` over its own columns; nothing
else here names a column.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

CLASSES = ("disturbed", "merging", "round smooth", "in-between round smooth", "cigar-shaped smooth",
           "barred spiral", "unbarred tight spiral", "unbarred loose spiral", "edge-on without bulge",
           "edge-on with bulge")
"""Galaxy10 DECaLS class names, in that data set's label order (0-9)."""

Rule = Mapping[str, Sequence[Sequence[str]]]
"""class -> paths; a path is the catalog columns whose product is its score."""


def _f(question: str, answer: str) -> str:
    return f"{question}_{answer}_fraction"


_FEATURED = _f("smooth_or_featured", "featured_or_disk")
_FACE_ON = (_FEATURED, _f("disk_edge_on", "no"))
_EDGE_ON = (_FEATURED, _f("disk_edge_on", "yes"))
_SPIRAL = (_f("has_spiral_arms", "yes"),)
_UNBARRED_SPIRAL = (*_FACE_ON, _f("bar", "no"), *_SPIRAL)
_ODD = ("odd_proportion_asked", _f("odd", "yes"))

GZ2_RULE: Rule = {
    "disturbed": [(*_ODD, _f("odd_feature", "disturbed")), (*_ODD, _f("odd_feature", "irregular"))],
    "merging": [(*_ODD, _f("odd_feature", "merger"))],
    "round smooth": [(_f("smooth_or_featured", "smooth"), _f("how_rounded", "completely_round"))],
    "in-between round smooth": [(_f("smooth_or_featured", "smooth"), _f("how_rounded", "in_between"))],
    "cigar-shaped smooth": [(_f("smooth_or_featured", "smooth"), _f("how_rounded", "cigar_shaped"))],
    "barred spiral": [(*_FACE_ON, _f("bar", "yes"), *_SPIRAL)],
    "unbarred tight spiral": [(*_UNBARRED_SPIRAL, _f("spiral_winding", "tight"))],
    "unbarred loose spiral": [(*_UNBARRED_SPIRAL, _f("spiral_winding", "medium")),
                              (*_UNBARRED_SPIRAL, _f("spiral_winding", "loose"))],
    "edge-on without bulge": [(*_EDGE_ON, _f("bulge_shape", "no_bulge"))],
    "edge-on with bulge": [(*_EDGE_ON, _f("bulge_shape", "rounded")), (*_EDGE_ON, _f("bulge_shape", "boxy"))],
}
"""The rule for this catalog's Galaxy Zoo 2 columns (see the module docstring)."""


def rule_columns(rule: Rule = GZ2_RULE) -> list[str]:
    """Every catalog column the rule reads."""
    return sorted({c for paths in rule.values() for path in paths for c in path})


def galaxy10_scores(frame: pd.DataFrame, rule: Rule = GZ2_RULE) -> pd.DataFrame:
    """One score column per class (named as :data:`CLASSES`); NaN where the row has no fractions."""
    scores = {}
    for name, paths in rule.items():
        total = np.zeros(len(frame))
        for path in paths:
            product = np.ones(len(frame))
            for column in path:
                product = product * frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
            total = total + product
        scores[name] = total
    return pd.DataFrame(scores, index=frame.index)


def galaxy10(frame: pd.DataFrame, rule: Rule = GZ2_RULE) -> pd.DataFrame:
    """``galaxy10_class`` (a category, missing on error rows) and ``galaxy10_confidence`` (its score)."""
    scores = galaxy10_scores(frame, rule)
    values = scores.to_numpy()
    known = np.isfinite(values).all(axis=1)
    best = np.argmax(np.where(np.isfinite(values), values, -1.0), axis=1)
    names = np.array(list(scores.columns), dtype=object)
    label = pd.Categorical(np.where(known, names[best], None), categories=list(scores.columns))
    confidence = np.where(known, values[np.arange(len(values)), best], np.nan)
    return pd.DataFrame({"galaxy10_class": label, "galaxy10_confidence": confidence.astype(np.float32)},
                        index=frame.index)


def add_galaxy10(frame: pd.DataFrame, rule: Rule = GZ2_RULE) -> pd.DataFrame:
    """``frame`` with the two Galaxy10 columns appended (when it has the columns the rule reads)."""
    if not set(rule_columns(rule)) <= set(frame.columns):
        return frame
    return pd.concat([frame, galaxy10(frame, rule)], axis=1)
