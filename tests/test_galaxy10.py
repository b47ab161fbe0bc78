"""Galaxy10 labels: the rule on known fractions, and on the real GZ2 volunteer votes against GZ2's own classes."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from galaxy_infer.galaxy10 import CLASSES, GZ2_RULE, add_galaxy10, galaxy10, rule_columns
from galaxy_infer.schema import GZ2


def frame_from_conditional(cond: np.ndarray) -> pd.DataFrame:
    """Catalog-like columns (fractions + proportion asked) from conditional fractions, as postprocess makes them."""
    frame = pd.DataFrame(cond.astype(np.float32), columns=list(GZ2.answer_columns))
    asked = GZ2.proportion_asked(cond)
    for i, column in enumerate(GZ2.asked_columns):
        frame[column] = asked[:, i]
    return frame


def one_hot(**answers: str) -> np.ndarray:
    """Every question answered unanimously: the given answers, else the first answer."""
    cond = np.zeros((1, GZ2.n_answers))
    for q in GZ2.questions:
        cond[0, GZ2.answer_index(q.name, answers.get(q.name, q.answer_names[0]))] = 1.0
    return cond


def test_rule_covers_the_ten_classes_with_catalog_columns():
    assert tuple(GZ2_RULE) == CLASSES
    assert set(rule_columns()) <= set(GZ2.answer_columns) | set(GZ2.asked_columns)


@pytest.mark.parametrize("answers,expected", [
    ({"smooth_or_featured": "smooth", "odd": "no", "how_rounded": "cigar_shaped"}, "cigar-shaped smooth"),
    ({"smooth_or_featured": "featured_or_disk", "disk_edge_on": "no", "bar": "yes", "odd": "no"}, "barred spiral"),
    ({"smooth_or_featured": "featured_or_disk", "disk_edge_on": "no", "bar": "no", "odd": "no",
      "spiral_winding": "medium"}, "unbarred loose spiral"),
    ({"smooth_or_featured": "featured_or_disk", "disk_edge_on": "yes", "odd": "no", "bulge_shape": "boxy"},
     "edge-on with bulge"),
    ({"smooth_or_featured": "smooth", "odd": "yes", "odd_feature": "merger"}, "merging"),
])
def test_unanimous_votes_give_their_class_with_full_confidence(answers, expected):
    out = galaxy10(frame_from_conditional(one_hot(**answers)))
    assert out.galaxy10_class[0] == expected
    assert out.galaxy10_confidence[0] == pytest.approx(1.0)


def test_error_rows_have_no_class_and_other_frames_are_left_alone():
    frame = pd.concat([frame_from_conditional(one_hot(smooth_or_featured="smooth", odd="no")),
                       frame_from_conditional(np.full((1, GZ2.n_answers), np.nan))], ignore_index=True)
    out = add_galaxy10(frame)
    assert out.galaxy10_class[0] == "round smooth" and pd.isna(out.galaxy10_class[1])
    assert np.isnan(out.galaxy10_confidence[1])
    plain = pd.DataFrame({"object_id": ["a"]})
    assert add_galaxy10(plain) is plain


def gz2_class_to_galaxy10(gz2_class: str) -> str | None:
    """GZ2's own summary string (Hart et al. 2016) -> the Galaxy10 class it describes, where it says."""
    if "(m)" in gz2_class:
        return "merging"
    if "(d)" in gz2_class or "(i)" in gz2_class:
        return "disturbed"
    smooth = {"Er": "round smooth", "Ei": "in-between round smooth", "Ec": "cigar-shaped smooth",
              "Sen": "edge-on without bulge", "Seb": "edge-on with bulge", "Ser": "edge-on with bulge"}
    if gz2_class[:3] in smooth or gz2_class[:2] in smooth:
        return smooth.get(gz2_class[:3]) or smooth[gz2_class[:2]]
    arms = re.match(r"(SB|S)[a-d][1-4+?]([tml])", gz2_class)
    if not arms:
        return None
    if arms.group(1) == "SB":
        return "barred spiral"
    return "unbarred tight spiral" if arms.group(2) == "t" else "unbarred loose spiral"


@pytest.mark.shared_data
def test_rule_on_volunteer_votes_agrees_with_gz2_classes(shared_data):
    labels = pd.read_csv(shared_data / "gz2_votes" / "labels.csv")
    cond = labels[[c + "_debiased" for c in GZ2.hart_columns]].to_numpy(np.float64)
    for s in GZ2.slices.values():  # debiased fractions need not sum to one
        total = cond[:, s].sum(axis=1, keepdims=True)
        cond[:, s] = np.divide(cond[:, s], total, out=np.zeros_like(cond[:, s]), where=total > 0)
    got = galaxy10(frame_from_conditional(cond)).galaxy10_class.astype(object)
    expected = labels.gz2_class.map(gz2_class_to_galaxy10)
    known = expected.notna()
    agreement = (got[known] == expected[known]).mean()
    assert known.sum() > 250
    assert agreement > 0.85, agreement
