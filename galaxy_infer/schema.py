"""The Galaxy Zoo 2 decision tree: the single source of truth for questions, answers and columns.

Everything that names a morphology column (postprocessing, the catalog writer, training
targets and label readers) asks :data:`GZ2` rather than spelling names itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

SCHEMA_VERSION = "1"

ODD_FEATURES = ("ring", "lens_or_arc", "disturbed", "irregular", "other", "merger", "dust_lane")


@dataclass(frozen=True)
class Answer:
    """One answer of a question, with the names it has in each labelling scheme."""

    name: str
    kaggle: str
    hart: str


@dataclass(frozen=True)
class Question:
    """One question; ``asked_after`` is the (question, answer) whose choice leads here."""

    name: str
    answers: tuple[Answer, ...]
    asked_after: tuple[str, str] | None = None
    asked_unless: tuple[str, str] | None = None
    hart_prefix: str = ""

    @property
    def answer_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.answers)


@dataclass(frozen=True)
class Schema:
    """A decision tree of questions whose answers form one flat vector of columns."""

    questions: tuple[Question, ...]
    version: str = SCHEMA_VERSION
    _index: dict[str, Question] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {q.name: q for q in self.questions})

    def question(self, name: str) -> Question:
        return self._index[name]

    @cached_property
    def answer_columns(self) -> tuple[str, ...]:
        """``{question}_{answer}_fraction`` for every answer, in model-output order."""
        return tuple(f"{q.name}_{a.name}_fraction" for q in self.questions for a in q.answers)

    @cached_property
    def asked_columns(self) -> tuple[str, ...]:
        return tuple(f"{q.name}_proportion_asked" for q in self.questions)

    @cached_property
    def kaggle_columns(self) -> tuple[str, ...]:
        return tuple(a.kaggle for q in self.questions for a in q.answers)

    @cached_property
    def hart_columns(self) -> tuple[str, ...]:
        return tuple(f"{q.hart_prefix}_{a.hart}" for q in self.questions for a in q.answers)

    @property
    def n_answers(self) -> int:
        return len(self.answer_columns)

    @cached_property
    def slices(self) -> dict[str, slice]:
        """Where each question's answers sit in the flat answer vector."""
        out, start = {}, 0
        for q in self.questions:
            out[q.name] = slice(start, start + len(q.answers))
            start += len(q.answers)
        return out

    def answer_index(self, question: str, answer: str) -> int:
        q = self.question(question)
        return self.slices[question].start + q.answer_names.index(answer)

    def softmax_by_question(self, logits: np.ndarray) -> np.ndarray:
        """Per-question softmax of ``(n, n_answers)`` logits: conditional vote fractions."""
        out = np.empty_like(logits, dtype=np.float32)
        for s in self.slices.values():
            z = logits[:, s] - logits[:, s].max(axis=1, keepdims=True)
            e = np.exp(z)
            out[:, s] = e / e.sum(axis=1, keepdims=True)
        return out

    def proportion_asked(self, fractions: np.ndarray) -> np.ndarray:
        """``(n, n_questions)`` probability of reaching each question, from conditional fractions.

        Questions are listed parents first, so one pass multiplies down each path.
        """
        n = fractions.shape[0]
        asked = np.ones((n, len(self.questions)), dtype=np.float32)
        position = {q.name: i for i, q in enumerate(self.questions)}
        for i, q in enumerate(self.questions):
            if q.asked_after is not None:
                parent, answer = q.asked_after
                asked[:, i] = asked[:, position[parent]] * fractions[:, self.answer_index(parent, answer)]
            elif q.asked_unless is not None:
                parent, answer = q.asked_unless
                asked[:, i] = asked[:, position[parent]] * (
                    1.0 - fractions[:, self.answer_index(parent, answer)]
                )
        return asked

    def unconditional(self, fractions: np.ndarray) -> np.ndarray:
        """Kaggle-style unconditional fractions: each answer times the chance its question is asked."""
        asked = self.proportion_asked(fractions)
        out = fractions.astype(np.float32, copy=True)
        for i, q in enumerate(self.questions):
            out[:, self.slices[q.name]] *= asked[:, i : i + 1]
        return out

    def conditional_from_unconditional(self, unconditional: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`unconditional`, normalising each question's answers to sum to 1.

        Rows where a question was never reached get NaN for it (nothing to learn there).
        """
        out = np.full_like(unconditional, np.nan, dtype=np.float64)
        for s in self.slices.values():
            total = unconditional[:, s].sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, s] = np.where(total > 0, unconditional[:, s] / total, np.nan)
        return out


def _answers(question_no: int, hart_numbers: list[int], names: list[str], hart_names: list[str]) -> tuple[Answer, ...]:
    return tuple(
        Answer(name, f"Class{question_no}.{i + 1}", f"a{num:02d}_{hname}")
        for i, (num, name, hname) in enumerate(zip(hart_numbers, names, hart_names))
    )


def _gz2() -> Schema:
    q = [
        Question("smooth_or_featured",
                 _answers(1, [1, 2, 3], ["smooth", "featured_or_disk", "star_or_artifact"],
                          ["smooth", "features_or_disk", "star_or_artifact"]),
                 hart_prefix="t01_smooth_or_features"),
        Question("disk_edge_on", _answers(2, [4, 5], ["yes", "no"], ["yes", "no"]),
                 asked_after=("smooth_or_featured", "featured_or_disk"), hart_prefix="t02_edgeon"),
        Question("bar", _answers(3, [6, 7], ["yes", "no"], ["bar", "no_bar"]),
                 asked_after=("disk_edge_on", "no"), hart_prefix="t03_bar"),
        Question("has_spiral_arms", _answers(4, [8, 9], ["yes", "no"], ["spiral", "no_spiral"]),
                 asked_after=("disk_edge_on", "no"), hart_prefix="t04_spiral"),
        Question("bulge_prominence",
                 _answers(5, [10, 11, 12, 13], ["no_bulge", "just_noticeable", "obvious", "dominant"],
                          ["no_bulge", "just_noticeable", "obvious", "dominant"]),
                 asked_after=("disk_edge_on", "no"), hart_prefix="t05_bulge_prominence"),
        Question("odd", _answers(6, [14, 15], ["yes", "no"], ["yes", "no"]),
                 asked_unless=("smooth_or_featured", "star_or_artifact"), hart_prefix="t06_odd"),
        Question("how_rounded",
                 _answers(7, [16, 17, 18], ["completely_round", "in_between", "cigar_shaped"],
                          ["completely_round", "in_between", "cigar_shaped"]),
                 asked_after=("smooth_or_featured", "smooth"), hart_prefix="t07_rounded"),
        Question("odd_feature",
                 _answers(8, [19, 20, 21, 22, 23, 24, 38], list(ODD_FEATURES), list(ODD_FEATURES)),
                 asked_after=("odd", "yes"), hart_prefix="t08_odd_feature"),
        Question("bulge_shape",
                 _answers(9, [25, 26, 27], ["rounded", "boxy", "no_bulge"], ["rounded", "boxy", "no_bulge"]),
                 asked_after=("disk_edge_on", "yes"), hart_prefix="t09_bulge_shape"),
        Question("spiral_winding",
                 _answers(10, [28, 29, 30], ["tight", "medium", "loose"], ["tight", "medium", "loose"]),
                 asked_after=("has_spiral_arms", "yes"), hart_prefix="t10_arms_winding"),
        Question("spiral_arm_count",
                 _answers(11, [31, 32, 33, 34, 36, 37], ["1", "2", "3", "4", "more_than_4", "cant_tell"],
                          ["1", "2", "3", "4", "more_than_4", "cant_tell"]),
                 asked_after=("has_spiral_arms", "yes"), hart_prefix="t11_arms_number"),
    ]
    return Schema(tuple(q))


GZ2: Schema = _gz2()
"""The Galaxy Zoo 2 tree of the catalog contract (11 questions, 37 answers)."""
