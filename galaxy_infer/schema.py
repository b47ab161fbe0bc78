"""Decision trees as data: questions, answers, which answer leads to each question, and column names.

Everything that names a morphology column (postprocessing, the catalog writer, training
targets and label readers) asks a :class:`Schema` rather than spelling names itself. A model
carries its tree in its metadata (by name, or embedded as :meth:`Schema.to_dict`); :data:`GZ2`
is the tree of the bundled model, and :mod:`galaxy_infer.trees` holds the other built-in trees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

SCHEMA_VERSION = "1"
"""Version of the prediction columns a tree gives (what a model's ``schema_version`` names): unchanged since 1."""
CATALOG_SCHEMA_VERSION = "2"
"""Version of the whole catalog contract (``docs/catalog-schema.md``), written into every Parquet file;
2 added ``error_kind``. Models are not tied to it: a model for prediction columns version 1 writes version 2 catalogs."""

ODD_FEATURES = ("ring", "lens_or_arc", "disturbed", "irregular", "other", "merger", "dust_lane")


@dataclass(frozen=True)
class Answer:
    """One answer of a question, with the names it has in each labelling scheme.

    ``original`` is the Galaxy Zoo / Zoobot column stem (``smooth-or-featured_smooth``) that public
    catalogs and Zoobot label tables use; ``kaggle`` and ``hart`` exist for GZ2 only.
    """

    name: str
    kaggle: str = ""
    hart: str = ""
    original: str = ""


@dataclass(frozen=True)
class Question:
    """One question; ``asked_after`` is the (question, answer) whose choice leads here, and
    ``asked_unless`` the (question, answer) whose choice means it is not asked."""

    name: str
    answers: tuple[Answer, ...]
    asked_after: tuple[str, str] | None = None
    asked_unless: tuple[str, str] | None = None
    hart_prefix: str = ""
    original: str = ""

    @property
    def answer_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.answers)

    @property
    def parent(self) -> tuple[str, str] | None:
        return self.asked_after or self.asked_unless


@dataclass(frozen=True)
class Flag:
    """A yes/no catalog column: ``{column}_prob`` is the summed unconditional probability of
    ``answers`` (each answer's fraction times the probability its question is reached, i.e. the
    product of the fractions along the path to it); ``{column}_flag`` is ``prob >= threshold``."""

    name: str
    answers: tuple[tuple[str, str], ...]
    column: str = ""
    threshold: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", tuple(tuple(a) for a in self.answers))
        if not self.column:
            object.__setattr__(self, "column", self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "column": self.column, "answers": [list(a) for a in self.answers],
                "threshold": float(self.threshold)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Flag:
        return cls(str(data["name"]), tuple(tuple(a) for a in data["answers"]), str(data.get("column", "")),
                   float(data.get("threshold", 0.5)))


@dataclass(frozen=True)
class Schema:
    """A decision tree of questions whose answers form one flat vector of columns.

    Questions are listed parents first (checked), so one pass down the list follows every path.
    ``flags`` are the tree's default flags (thresholds may be replaced by a model's own).
    """

    questions: tuple[Question, ...]
    version: str = SCHEMA_VERSION
    name: str = "gz2"
    flags: tuple[Flag, ...] = ()
    description: str = ""
    _index: dict[str, Question] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {q.name: q for q in self.questions})
        seen: set[str] = set()
        for q in self.questions:
            if q.parent is not None:
                parent, answer = q.parent
                if parent not in seen or answer not in self._index[parent].answer_names:
                    raise ValueError(f"tree {self.name}: {q.name} follows {parent}={answer}, which is not "
                                     "an answer of an earlier question")
            seen.add(q.name)
        for f in self.flags:
            for question, answer in f.answers:
                if question not in self._index or answer not in self._index[question].answer_names:
                    raise ValueError(f"tree {self.name}: flag {f.name} names unknown answer {question}={answer}")

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

    @cached_property
    def original_columns(self) -> dict[str, str]:
        """``{question}_{answer}_fraction`` -> the Galaxy Zoo / Zoobot name ``{original}_fraction``
        (e.g. ``smooth-or-featured_smooth_fraction``), and ``{question}_proportion_asked`` ->
        ``{original question}_proportion_asked``: the one rename that joins public GZ catalogs."""
        out = {f"{q.name}_{a.name}_fraction": f"{a.original}_fraction"
               for q in self.questions for a in q.answers if a.original}
        out.update({f"{q.name}_proportion_asked": f"{q.original}_proportion_asked"
                    for q in self.questions if q.original})
        return out

    def flags_with(self, thresholds: dict[str, float]) -> tuple[Flag, ...]:
        """The tree's default flags with ``thresholds`` (by flag name) where given."""
        return tuple(Flag(f.name, f.answers, f.column, float(thresholds.get(f.name, f.threshold))) for f in self.flags)

    def unconditional_answer(self, fractions: np.ndarray, asked: np.ndarray, question: str, answer: str) -> np.ndarray:
        """Probability that a volunteer reaches ``question`` and answers ``answer``."""
        position = [q.name for q in self.questions].index(question)
        return asked[:, position] * fractions[:, self.answer_index(question, answer)]

    def to_dict(self) -> dict[str, Any]:
        """The tree as plain JSON-able data (what a model embeds when its tree is not built in)."""
        def answer(a: Answer) -> dict[str, str]:
            return {k: v for k, v in (("name", a.name), ("original", a.original), ("kaggle", a.kaggle),
                                      ("hart", a.hart)) if v or k == "name"}

        questions = []
        for q in self.questions:
            d: dict[str, Any] = {"name": q.name, "answers": [answer(a) for a in q.answers]}
            for key in ("asked_after", "asked_unless"):
                if getattr(q, key) is not None:
                    d[key] = list(getattr(q, key))
            for key in ("original", "hart_prefix"):
                if getattr(q, key):
                    d[key] = getattr(q, key)
            questions.append(d)
        return {"name": self.name, "description": self.description, "questions": questions,
                "flags": [f.to_dict() for f in self.flags]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``ValueError``/``TypeError`` when malformed."""
        questions = []
        for q in data["questions"]:
            answers = tuple(Answer(str(a["name"]), a.get("kaggle", ""), a.get("hart", ""), a.get("original", ""))
                            for a in q["answers"])
            if not answers:
                raise ValueError(f"question {q['name']} has no answers")
            questions.append(Question(str(q["name"]), answers,
                                      tuple(q["asked_after"]) if q.get("asked_after") else None,
                                      tuple(q["asked_unless"]) if q.get("asked_unless") else None,
                                      q.get("hart_prefix", ""), q.get("original", "")))
        return cls(tuple(questions), name=str(data["name"]), description=data.get("description", ""),
                   flags=tuple(Flag.from_dict(f) for f in data.get("flags", [])))

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


def _with_hart_originals(questions: list[Question]) -> tuple[Question, ...]:
    """GZ2's public names are Hart+16's (``t01_smooth_or_features_a01_smooth``)."""
    return tuple(Question(q.name, tuple(Answer(a.name, a.kaggle, a.hart, f"{q.hart_prefix}_{a.hart}") for a in q.answers),
                          q.asked_after, q.asked_unless, q.hart_prefix, q.hart_prefix) for q in questions)


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
    flags = tuple(Flag(f, (("odd_feature", f),), f"odd_{f}") for f in ODD_FEATURES)
    return Schema(_with_hart_originals(q), name="gz2", flags=flags,
                  description="Galaxy Zoo 2 (Willett+13, Hart+16), SDSS: the bundled model's tree")


GZ2: Schema = _gz2()
"""The Galaxy Zoo 2 tree of the catalog contract (11 questions, 37 answers)."""
