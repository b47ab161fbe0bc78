"""Label readers: catalogs of cutouts with labels of any form -> targets on the GZ2 tree.

Every reader returns a :class:`LabelledSet`: file paths, an ``(n, 37)`` matrix of *conditional*
vote fractions in :data:`GZ2.answer_columns` order where NaN marks a question the sample says
nothing about, and an ``(n, 37)`` 0/1 matrix of *negated events*: a sample whose row is not all
zero is known NOT to have the conjunction of the marked answers (e.g. GZ1 'elliptical' says
"not (odd = yes and odd feature = merger)", because merger was a competing GZ1 choice).

Label forms: class labels / partial answers (a mapping class -> {question: answer}), Hart+16
columns (optionally ``_debiased``), Kaggle ``Class1.1`` (unconditional) columns and our own
``{question}_{answer}_fraction`` (conditional) columns. :data:`SHARED_SETS` maps the four sets of
``../shared/data`` onto the tree as their README describes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from galaxy_infer.schema import GZ2, Schema

Answers = Mapping[str, str]
"""A partial answer of the tree: ``{question: answer}``."""


@dataclass
class LabelledSet:
    """One labelled catalog mapped onto the tree."""

    name: str
    paths: list[str]
    targets: np.ndarray
    negated: np.ndarray
    strata: np.ndarray
    table: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> LabelledSet:
        return LabelledSet(self.name, [self.paths[i] for i in index], self.targets[index],
                           self.negated[index], self.strata[index], self.table.iloc[index].reset_index(drop=True))


def empty_targets(n: int) -> np.ndarray:
    return np.full((n, GZ2.n_answers), np.nan, dtype=np.float32)


def answers_row(answers: Answers) -> np.ndarray:
    """One target row with hard (one-hot) answers for the named questions, NaN elsewhere."""
    row = empty_targets(1)[0]
    for question, answer in answers.items():
        row[GZ2.slices[question]] = 0.0
        row[GZ2.answer_index(question, answer)] = 1.0
    return row


def event_row(answers: Answers) -> np.ndarray:
    """A negated-event row marking the answers whose conjunction the sample does not have."""
    row = np.zeros(GZ2.n_answers, dtype=np.float32)
    for question, answer in answers.items():
        row[GZ2.answer_index(question, answer)] = 1.0
    return row


def normalise_by_question(fractions: np.ndarray, tree: Schema = GZ2) -> np.ndarray:
    """Make each question's answers sum to 1; questions with no votes (sum 0 or NaN) become NaN."""
    out = np.full_like(fractions, np.nan, dtype=np.float32)
    for s in tree.slices.values():
        total = fractions[:, s].sum(axis=1, keepdims=True)
        ok = np.isfinite(total) & (total > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, s] = np.where(ok, fractions[:, s] / total, np.nan)
    return out


def targets_from_classes(labels: pd.Series, mapping: Mapping[str, Answers],
                         negations: Mapping[str, Answers] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class labels (or partial answers per class) -> targets and negated events.

    Classes absent from ``mapping`` (e.g. 'dont_know') get no label at all.
    """
    negations = negations or {}
    targets, negated = empty_targets(len(labels)), np.zeros((len(labels), GZ2.n_answers), np.float32)
    for i, label in enumerate(labels.astype(str)):
        if label in mapping:
            targets[i] = answers_row(mapping[label])
        if label in negations:
            negated[i] = event_row(negations[label])
    return targets, negated


def targets_from_answer_columns(table: pd.DataFrame) -> np.ndarray:
    """Partial answers given as one column per question holding the answer name (blank = unknown)."""
    targets = empty_targets(len(table))
    for q in GZ2.questions:
        if q.name not in table.columns:
            continue
        for i, answer in enumerate(table[q.name]):
            if isinstance(answer, str) and answer:
                targets[i, GZ2.slices[q.name]] = 0.0
                targets[i, GZ2.answer_index(q.name, answer)] = 1.0
    return targets


def targets_from_hart(table: pd.DataFrame, suffix: str = "_debiased") -> np.ndarray:
    """Hart+16 GZ2 columns (conditional fractions, e.g. ``t01_..._a01_smooth_debiased``)."""
    columns = [c + suffix for c in GZ2.hart_columns]
    return normalise_by_question(table[columns].to_numpy(dtype=np.float32))


def targets_from_kaggle(table: pd.DataFrame) -> np.ndarray:
    """Kaggle ``training_solutions_rev1`` columns (unconditional) -> conditional fractions."""
    unconditional = table[list(GZ2.kaggle_columns)].to_numpy(dtype=np.float64)
    return GZ2.conditional_from_unconditional(unconditional).astype(np.float32)


def targets_from_fractions(table: pd.DataFrame) -> np.ndarray:
    """Our ``{question}_{answer}_fraction`` columns (conditional); missing columns stay NaN."""
    targets = empty_targets(len(table))
    for i, column in enumerate(GZ2.answer_columns):
        if column in table.columns:
            targets[:, i] = table[column].to_numpy(dtype=np.float32)
    return normalise_by_question(targets)


def targets_from_zoobot_columns(table: pd.DataFrame, tree: Schema) -> np.ndarray:
    """Zoobot-style label columns -> ``(n, tree.n_answers)`` conditional fractions on ``tree``.

    Each answer is read from ``{question}_{answer}`` (vote counts, as Zoobot trains on) or
    ``{question}_{answer}_fraction``, under its Galaxy Zoo name (``smooth-or-featured_smooth``)
    or its snake_case one; a question none of whose answers is present, or that nobody answered,
    is NaN (unknown) for the loss.
    """
    targets = np.full((len(table), tree.n_answers), np.nan, dtype=np.float32)
    i = 0
    for q in tree.questions:
        for a in q.answers:
            for stem in (a.original, f"{q.name}_{a.name}"):
                column = next((c for c in (stem, f"{stem}_fraction") if stem and c in table.columns), None)
                if column is not None:
                    targets[:, i] = table[column].to_numpy(dtype=np.float32)
                    break
            i += 1
    return normalise_by_question(targets, tree)


# --- the four sets of ../shared/data --------------------------------------------------------

FEATURED = {"smooth_or_featured": "featured_or_disk"}
FACE_ON_SPIRAL = {**FEATURED, "disk_edge_on": "no", "has_spiral_arms": "yes"}
MERGER = {"odd": "yes", "odd_feature": "merger"}
RING = {"odd": "yes", "odd_feature": "ring"}

GZ1_CLASSES: dict[str, Answers] = {
    "elliptical": {"smooth_or_featured": "smooth"},
    "spiral_clockwise": FACE_ON_SPIRAL,
    "spiral_anticlockwise": FACE_ON_SPIRAL,
    "edge_on": {**FEATURED, "disk_edge_on": "yes"},
    "merger": MERGER,
}
# GZ1 offered 'merger' beside the other classes, so a galaxy the volunteers put in another class
# is known not to be a merger; it says nothing about other odd features, hence a negated event.
GZ1_NEGATIONS: dict[str, Answers] = {c: MERGER for c in ("elliptical", "spiral_clockwise",
                                                          "spiral_anticlockwise", "edge_on")}
KAGGLE_SPIRAL = {**FACE_ON_SPIRAL, "odd": "yes"}


def read_gz1(folder: Path) -> LabelledSet:
    """GZ1 leaf classes; 'dont_know' gives no label (kept out of training)."""
    table = pd.read_csv(folder / "labels.csv")
    table = table[table["class_name"] != "dont_know"].reset_index(drop=True)
    targets, negated = targets_from_classes(table["class_name"], GZ1_CLASSES, GZ1_NEGATIONS)
    return LabelledSet("gz1_sdss", _paths(folder, table), targets, negated,
                       table["class_name"].to_numpy(str), table)


def read_kaggle_spiral(folder: Path) -> LabelledSet:
    """Kaggle 'spiral' = featured + face-on + spiral arms + odd (the README's caveat).

    'non_spiral' is everything else, ordinary spirals included, so it states only that the
    four-answer conjunction is false: a negated event, no per-question target.
    """
    table = pd.read_csv(folder / "labels.csv")
    targets, negated = targets_from_classes(table["label"], {"spiral": KAGGLE_SPIRAL},
                                            {"non_spiral": KAGGLE_SPIRAL})
    return LabelledSet("gz_kaggle_spiral", _paths(folder, table), targets, negated,
                       table["label"].to_numpy(str), table)


def read_gz2_votes(folder: Path) -> LabelledSet:
    """All 37 Hart+16 debiased conditional fractions (renormalised per question)."""
    table = pd.read_csv(folder / "labels.csv")
    targets = targets_from_hart(table)
    return LabelledSet("gz2_votes", _paths(folder, table), targets,
                       np.zeros_like(targets), table["simple_class"].to_numpy(str), table)


def read_decals_rings(folder: Path) -> LabelledSet:
    """GZ DECaLS rings: ring = 1 -> odd = yes, feature = ring; ring = 0 -> not (odd and ring).

    The three DECaLS fractions are conditional answers of questions 1, 2 and 4. DECaLS's first
    question has an artifact answer we are not given, so it is taken as 0 there.
    """
    table = pd.read_csv(folder / "labels.csv")
    n = len(table)
    targets, negated = targets_from_classes(table["ring"].astype(int).astype(str), {"1": RING}, {"0": RING})
    featured = table["smooth-or-featured_featured-or-disk_fraction"].to_numpy(np.float32)
    face_on = table["disk-edge-on_no_fraction"].to_numpy(np.float32)
    no_arms = table["has-spiral-arms_no_fraction"].to_numpy(np.float32)
    s = GZ2.slices
    targets[:, s["smooth_or_featured"]] = np.stack([1 - featured, featured, np.zeros(n, np.float32)], 1)
    targets[:, s["disk_edge_on"]] = np.stack([1 - face_on, face_on], 1)
    targets[:, s["has_spiral_arms"]] = np.stack([1 - no_arms, no_arms], 1)
    return LabelledSet("gzdecals_rings", _paths(folder, table), targets, negated,
                       table["ring"].astype(int).to_numpy(str), table)


def _paths(folder: Path, table: pd.DataFrame) -> list[str]:
    return [str(folder / f) for f in table["file"]]


SHARED_SETS: dict[str, Callable[[Path], LabelledSet]] = {
    "gz1_sdss": read_gz1,
    "gz_kaggle_spiral": read_kaggle_spiral,
    "gz2_votes": read_gz2_votes,
    "gzdecals_rings": read_decals_rings,
}


def read_catalog(path: Path, form: str, name: str | None = None, class_column: str = "label",
                 classes: Mapping[str, Answers] | None = None) -> LabelledSet:
    """A user's catalog (CSV or Parquet with a ``file`` column relative to it) in any label form.

    ``form`` is one of ``classes``, ``answers``, ``hart``, ``hart_debiased``, ``kaggle``, ``fractions``.
    """
    path = Path(path)
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    negated = np.zeros((len(table), GZ2.n_answers), np.float32)
    strata = np.zeros(len(table), dtype=str)
    if form == "classes":
        targets, negated = targets_from_classes(table[class_column], classes or {})
        strata = table[class_column].to_numpy(str)
    elif form == "answers":
        targets = targets_from_answer_columns(table)
    elif form in ("hart", "hart_debiased"):
        targets = targets_from_hart(table, "_debiased" if form == "hart_debiased" else "")
    elif form == "kaggle":
        targets = targets_from_kaggle(table)
    elif form == "fractions":
        targets = targets_from_fractions(table)
    else:
        raise ValueError(f"unknown label form {form!r}")
    return LabelledSet(name or path.parent.name, _paths(path.parent, table), targets, negated, strata, table)
