"""Label readers: catalogs of cutouts with labels of any form -> targets on the GZ2 tree.

Every reader returns a :class:`LabelledSet`: file paths, an ``(n, 37)`` matrix of *conditional*
vote fractions in :data:`GZ2.answer_columns` order where NaN marks a question the sample says
nothing about, and an ``(n, 37)`` 0/1 matrix of *negated events*: a sample whose row is not all
zero is known NOT to have the conjunction of the marked answers (e.g. GZ1 'elliptical' says
"not (odd feature = merger)", because merger was a competing GZ1 choice).

Label forms: class labels / partial answers (a mapping class -> {question: answer}), Hart+16
columns (optionally ``_debiased``), Kaggle ``Class1.1`` (unconditional) columns and our own
``{question}_{answer}_fraction`` (conditional) columns. :data:`SHARED_SETS` maps the four sets of
``../shared/data`` onto the tree as their README describes.

Any other tree: :func:`read_vote_catalog` reads a table of Zoobot-style ``{question}_{answer}``
vote counts or fractions onto any built-in tree, and :data:`TREE_SETS` lists the shared sets
readable on each tree (on ``gz_desi``: GZ1's classes and the GZ DECaLS rings' own fractions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from galaxy_infer.schema import GZ2, Schema
from galaxy_infer.trees import GZ_DESI

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
    tree: Schema = field(default=GZ2, repr=False)
    """The tree the targets' columns follow."""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> LabelledSet:
        return LabelledSet(self.name, [self.paths[i] for i in index], self.targets[index],
                           self.negated[index], self.strata[index], self.table.iloc[index].reset_index(drop=True),
                           self.tree)


def empty_targets(n: int, tree: Schema = GZ2) -> np.ndarray:
    return np.full((n, tree.n_answers), np.nan, dtype=np.float32)


def answers_row(answers: Answers, tree: Schema = GZ2) -> np.ndarray:
    """One target row with hard (one-hot) answers for the named questions, NaN elsewhere."""
    row = empty_targets(1, tree)[0]
    for question, answer in answers.items():
        row[tree.slices[question]] = 0.0
        row[tree.answer_index(question, answer)] = 1.0
    return row


def event_row(answers: Answers, tree: Schema = GZ2) -> np.ndarray:
    """A negated-event row marking the answers whose conjunction the sample does not have."""
    row = np.zeros(tree.n_answers, dtype=np.float32)
    for question, answer in answers.items():
        row[tree.answer_index(question, answer)] = 1.0
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
                         negations: Mapping[str, Answers] | None = None,
                         tree: Schema = GZ2) -> tuple[np.ndarray, np.ndarray]:
    """Class labels (or partial answers per class) -> targets and negated events on ``tree``.

    Classes absent from ``mapping`` (e.g. 'dont_know') get no label at all.
    """
    negations = negations or {}
    targets, negated = empty_targets(len(labels), tree), np.zeros((len(labels), tree.n_answers), np.float32)
    for i, label in enumerate(labels.astype(str)):
        if label in mapping:
            targets[i] = answers_row(mapping[label], tree)
        if label in negations:
            negated[i] = event_row(negations[label], tree)
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
# "not a merger" / "not a ring" as negated events on the odd feature alone: whether or not the
# galaxy is odd, a ring or merger is not what makes it so. Negating "odd and ring" instead could be
# met by lowering 'odd = yes', which the population rates of training.priors now keep honest.
NOT_MERGER = {"odd_feature": "merger"}
NOT_RING = {"odd_feature": "ring"}

GZ1_CLASSES: dict[str, Answers] = {
    "elliptical": {"smooth_or_featured": "smooth"},
    "spiral_clockwise": FACE_ON_SPIRAL,
    "spiral_anticlockwise": FACE_ON_SPIRAL,
    "edge_on": {**FEATURED, "disk_edge_on": "yes"},
    "merger": MERGER,
}
# GZ1 offered 'merger' beside the other classes, so a galaxy the volunteers put in another class
# is known not to be a merger; it says nothing about other odd features, hence a negated event.
GZ1_NEGATIONS: dict[str, Answers] = {c: NOT_MERGER for c in ("elliptical", "spiral_clockwise",
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
    """GZ DECaLS rings: ring = 1 -> odd = yes, feature = ring; ring = 0 -> odd feature not ring.

    The three DECaLS fractions are conditional answers of questions 1, 2 and 4. DECaLS's first
    question has an artifact answer we are not given, so it is taken as 0 there.
    """
    table = pd.read_csv(folder / "labels.csv")
    n = len(table)
    targets, negated = targets_from_classes(table["ring"].astype(int).astype(str), {"1": RING}, {"0": NOT_RING})
    featured = table["smooth-or-featured_featured-or-disk_fraction"].to_numpy(np.float32)
    face_on = table["disk-edge-on_no_fraction"].to_numpy(np.float32)
    no_arms = table["has-spiral-arms_no_fraction"].to_numpy(np.float32)
    s = GZ2.slices
    targets[:, s["smooth_or_featured"]] = np.stack([1 - featured, featured, np.zeros(n, np.float32)], 1)
    targets[:, s["disk_edge_on"]] = np.stack([1 - face_on, face_on], 1)
    targets[:, s["has_spiral_arms"]] = np.stack([1 - no_arms, no_arms], 1)
    return LabelledSet("gzdecals_rings", _paths(folder, table), targets, negated,
                       table["ring"].astype(int).to_numpy(str), table)


def _paths(folder: Path, table: pd.DataFrame, column: str = "file") -> list[str]:
    return [str(folder / f) for f in table[column]]


def first_answer_strata(targets: np.ndarray, tree: Schema) -> np.ndarray:
    """The majority answer of the tree's first question (``unknown`` where not labelled): what a
    vote catalog is split on, so each split holds, e.g., smooth and featured galaxies in proportion."""
    first = tree.questions[0]
    t = targets[:, tree.slices[first.name]]
    known = np.isfinite(t).all(axis=1)
    names = np.array(first.answer_names, dtype=object)[np.nan_to_num(t, nan=-1).argmax(axis=1)]
    return np.where(known, names, "unknown").astype(str)


def read_vote_catalog(path: str | Path, tree: Schema, name: str | None = None,
                      file_column: str = "file") -> LabelledSet:
    """A table (CSV or Parquet) of cutout files with Zoobot-style ``{question}_{answer}`` vote counts
    or ``_fraction`` columns on ``tree`` (see :func:`targets_from_zoobot_columns`); relative paths
    in ``file_column`` are taken from the table's folder (Zoobot's catalogs name it ``file_loc``).

    Raises ``ValueError`` when the file column is missing or no question has all its answer columns.
    """
    path = Path(path)
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if file_column not in table.columns:
        raise ValueError(f"{path}: no {file_column!r} column of cutout paths (set file_column)")
    targets = targets_from_zoobot_columns(table, tree)
    if not np.isfinite(targets).any():
        example = tree.questions[0].answers[0]
        raise ValueError(f"{path}: no question of tree {tree.name} has votes in all its answer columns "
                         f"(named e.g. {example.original or example.name!r} or {example.original + '_fraction'!r})")
    return LabelledSet(name or path.stem, _paths(path.parent, table, file_column), targets,
                       np.zeros_like(targets), first_answer_strata(targets, tree), table, tree)


# GZ1 on the GZ DESI tree: the same disk answers; a GZ1 merger is merging = merger (asked of every
# galaxy in GZ DESI), and a galaxy put in another GZ1 class is known not to be one.
DESI_FACE_ON_SPIRAL = {"smooth_or_featured": "featured_or_disk", "disk_edge_on": "no", "has_spiral_arms": "yes"}
GZ1_CLASSES_DESI: dict[str, Answers] = {
    "elliptical": {"smooth_or_featured": "smooth"},
    "spiral_clockwise": DESI_FACE_ON_SPIRAL,
    "spiral_anticlockwise": DESI_FACE_ON_SPIRAL,
    "edge_on": {"smooth_or_featured": "featured_or_disk", "disk_edge_on": "yes"},
    "merger": {"merging": "merger"},
}
GZ1_NEGATIONS_DESI: dict[str, Answers] = {c: {"merging": "merger"} for c in GZ1_CLASSES_DESI if c != "merger"}


def read_gz1_desi(folder: Path) -> LabelledSet:
    """GZ1 leaf classes on the GZ DESI tree ('dont_know' gives no label)."""
    table = pd.read_csv(folder / "labels.csv")
    table = table[table["class_name"] != "dont_know"].reset_index(drop=True)
    targets, negated = targets_from_classes(table["class_name"], GZ1_CLASSES_DESI, GZ1_NEGATIONS_DESI, GZ_DESI)
    return LabelledSet("gz1_sdss", _paths(folder, table), targets, negated, table["class_name"].to_numpy(str),
                       table, GZ_DESI)


def read_decals_rings_desi(folder: Path) -> LabelledSet:
    """GZ DECaLS rings on their own tree (``gz_desi``): the three given conditional fractions, the
    other answer of each yes/no question, artifact taken as 0 (as :func:`read_decals_rings` does);
    every other question unknown. There is no ring answer in this tree; the split is stratified on it."""
    table = pd.read_csv(folder / "labels.csv")
    featured = table["smooth-or-featured_featured-or-disk_fraction"]
    votes = pd.DataFrame({
        "smooth-or-featured_smooth_fraction": 1 - featured,
        "smooth-or-featured_featured-or-disk_fraction": featured,
        "smooth-or-featured_artifact_fraction": 0.0,
        "disk-edge-on_yes_fraction": 1 - table["disk-edge-on_no_fraction"],
        "disk-edge-on_no_fraction": table["disk-edge-on_no_fraction"],
        "has-spiral-arms_yes_fraction": 1 - table["has-spiral-arms_no_fraction"],
        "has-spiral-arms_no_fraction": table["has-spiral-arms_no_fraction"],
    })
    targets = targets_from_zoobot_columns(votes, GZ_DESI)
    return LabelledSet("gzdecals_rings", _paths(folder, table), targets, np.zeros_like(targets),
                       table["ring"].astype(int).to_numpy(str), table, GZ_DESI)


SHARED_SETS: dict[str, Callable[[Path], LabelledSet]] = {
    "gz1_sdss": read_gz1,
    "gz_kaggle_spiral": read_kaggle_spiral,
    "gz2_votes": read_gz2_votes,
    "gzdecals_rings": read_decals_rings,
}

TREE_SETS: dict[str, dict[str, Callable[[Path], LabelledSet]]] = {
    "gz2": SHARED_SETS,
    "gz_desi": {"gz1_sdss": read_gz1_desi, "gzdecals_rings": read_decals_rings_desi},
}
"""The shared sets readable on each tree, by tree name."""


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
