"""The built-in decision trees, and how a model names or embeds its tree.

Each tree after GZ2 is written as Galaxy Zoo writes it (hyphenated questions and answers, the
parent answer of each question) and turned into a :class:`~galaxy_infer.schema.Schema` whose
names are snake_case, keeping the hyphenated originals so that a catalog joins the public GZ
catalogs with one rename (:attr:`Schema.original_columns`). Questions and answers are in the
order of Zoobot's label columns, which is the order of a Zoobot model's outputs.

Reference: the question/answer pairs and dependencies of Zoobot 2.9 / galaxy-datasets
(``label_metadata.py``), for GZ DECaLS/DESI (Walmsley+22, +23), GZ Euclid (Euclid Q1),
GZ CANDELS, GZ Hubble, GZ JWST (CEERS) and GZ UKIDSS.
"""
from __future__ import annotations

from typing import Any

from galaxy_infer.schema import GZ2, Answer, Flag, Question, Schema

Pairs = dict[str, list[str]]


def snake(name: str) -> str:
    return name.replace("-", "_")


def from_zoobot(name: str, pairs: Pairs, dependencies: dict[str, str | None], flags: tuple[Flag, ...] = (),
                description: str = "", suffix: str = "") -> Schema:
    """A tree from Zoobot-style names: ``pairs`` maps each question to its answers (without the
    leading underscore Zoobot writes), ``dependencies`` each question to the ``{question}_{answer}``
    that leads to it (None: always asked). ``suffix`` (e.g. ``-dr8``) is dropped from the snake_case
    names but kept in the originals."""
    questions = []
    for question, answers in pairs.items():
        parent = dependencies.get(question)
        after = None
        if parent is not None:
            q, a = parent.split("_", 1)
            after = (snake(q.removesuffix(suffix)), snake(a))
        questions.append(Question(
            snake(question.removesuffix(suffix)),
            tuple(Answer(snake(a), original=f"{question}_{a}") for a in answers),
            asked_after=after, original=question))
    return Schema(tuple(questions), name=name, flags=flags, description=description)


def _merging_flags() -> tuple[Flag, ...]:
    return (Flag("merger", (("merging", "merger"),)),
            Flag("major_disturbance", (("merging", "major_disturbance"),)))


_DECALS_PAIRS: Pairs = {
    "smooth-or-featured": ["smooth", "featured-or-disk", "artifact"],
    "disk-edge-on": ["yes", "no"],
    "has-spiral-arms": ["yes", "no"],
    "bar": ["strong", "weak", "no"],
    "bulge-size": ["dominant", "large", "moderate", "small", "none"],
    "how-rounded": ["round", "in-between", "cigar-shaped"],
    "edge-on-bulge": ["boxy", "none", "rounded"],
    "spiral-winding": ["tight", "medium", "loose"],
    "spiral-arm-count": ["1", "2", "3", "4", "more-than-4", "cant-tell"],
    "merging": ["none", "minor-disturbance", "major-disturbance", "merger"],
}
_DECALS_DEPENDENCIES: dict[str, str | None] = {
    "smooth-or-featured": None,
    "disk-edge-on": "smooth-or-featured_featured-or-disk",
    "has-spiral-arms": "disk-edge-on_no",
    "bar": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
    "how-rounded": "smooth-or-featured_smooth",
    "edge-on-bulge": "disk-edge-on_yes",
    "spiral-winding": "has-spiral-arms_yes",
    "spiral-arm-count": "has-spiral-arms_yes",
    "merging": None,
}

GZ_DESI = from_zoobot("gz_desi", _DECALS_PAIRS, _DECALS_DEPENDENCIES, _merging_flags(),
                      "GZ DECaLS DR5/DR8 and GZ DESI (Walmsley+22, +23): 10 questions, 34 answers")

# Euclid (and Cosmic Dawn) replace the artifact answer by a problem branch and add clumps.
_EUCLID_PAIRS: Pairs = {
    **{k: v for k, v in _DECALS_PAIRS.items()},
    "smooth-or-featured": ["smooth", "featured-or-disk", "problem"],
    "clumps": ["yes", "no"],
    "problem": ["star", "artifact", "zoom"],
    "artifact": ["satellite", "scattered", "diffraction", "ray", "saturation", "other", "ghost"],
}
_EUCLID_DEPENDENCIES = {**_DECALS_DEPENDENCIES, "clumps": "disk-edge-on_no",
                        "problem": "smooth-or-featured_problem", "artifact": "problem_artifact"}

GZ_EUCLID = from_zoobot(
    "gz_euclid", _EUCLID_PAIRS, _EUCLID_DEPENDENCIES,
    _merging_flags() + (Flag("problem", (("smooth_or_featured", "problem"),)),
                        Flag("star", (("problem", "star"),)),
                        Flag("artifact", (("problem", "artifact"),))),
    "GZ Euclid (Euclid Q1, Walmsley+25): 13 questions, 46 answers")

_HST_PAIRS: Pairs = {
    "smooth-or-featured": ["smooth", "features", "artifact"],
    "how-rounded": ["completely", "in-between", "cigar-shaped"],
    "clumpy-appearance": ["yes", "no"],
    "disk-edge-on": ["yes", "no"],
    "edge-on-bulge": ["yes", "no"],
    "bar": ["yes", "no"],
    "has-spiral-arms": ["yes", "no"],
    "spiral-winding": ["tight", "medium", "loose"],
    "spiral-arm-count": ["1", "2", "3", "4", "5-plus", "cant-tell"],
    "bulge-size": ["none", "obvious", "dominant"],
    "merging": ["merger", "tidal-debris", "both", "neither"],
}
_HST_DEPENDENCIES: dict[str, str | None] = {
    "smooth-or-featured": None,
    "how-rounded": "smooth-or-featured_smooth",
    "clumpy-appearance": "smooth-or-featured_features",
    "disk-edge-on": "clumpy-appearance_no",
    "edge-on-bulge": "disk-edge-on_yes",
    "bar": "disk-edge-on_no",
    "has-spiral-arms": "disk-edge-on_no",
    "spiral-winding": "disk-edge-on_no",
    "spiral-arm-count": "disk-edge-on_no",
    "bulge-size": "disk-edge-on_no",
    "merging": None,
}
GZ_CANDELS = from_zoobot("gz_candels", _HST_PAIRS, _HST_DEPENDENCIES,
                         (Flag("merger", (("merging", "merger"), ("merging", "both"))),
                          Flag("tidal_debris", (("merging", "tidal_debris"), ("merging", "both")))),
                         "GZ CANDELS (Simmons+17), as Zoobot trains on it (clump details left out)")

GZ_HUBBLE = from_zoobot(
    "gz_hubble",
    {"smooth-or-featured": ["smooth", "features", "artifact"],
     "how-rounded": ["completely", "in-between", "cigar-shaped"],
     "disk-edge-on": ["yes", "no"],
     "bulge-shape": ["rounded", "boxy", "none"],
     "bar": ["yes", "no"],
     "has-spiral-arms": ["yes", "no"],
     "spiral-winding": ["tight", "medium", "loose"],
     "spiral-arm-count": ["1", "2", "3", "4", "5-plus", "cant-tell"],
     "bulge-size": ["none", "just-noticeable", "obvious", "dominant"]},
    {"smooth-or-featured": None, "how-rounded": "smooth-or-featured_smooth",
     "disk-edge-on": "smooth-or-featured_features", "bulge-shape": "disk-edge-on_yes",
     "bar": "disk-edge-on_no", "has-spiral-arms": "disk-edge-on_no", "spiral-winding": "disk-edge-on_no",
     "spiral-arm-count": "disk-edge-on_no", "bulge-size": "disk-edge-on_no"},
    description="GZ Hubble (Willett+17), Zoobot's simplified version without the clump questions")

GZ_JWST = from_zoobot(
    "gz_jwst",
    {**{k: v for k, v in _DECALS_PAIRS.items() if k != "merging"},
     "smooth-or-featured": ["smooth", "featured-or-disk", "star-artifact-zoom"],
     "clumps": ["yes", "no"],
     "merging": ["none", "minor-disturbance", "major-disturbance", "merger"],
     "problem": ["star", "artifact", "bad-zoom"]},
    {**_DECALS_DEPENDENCIES, "clumps": None, "problem": "smooth-or-featured_star-artifact-zoom"},
    _merging_flags() + (Flag("artifact", (("problem", "artifact"),)),),
    "GZ JWST CEERS (Zoobot's layout)")

GZ_UKIDSS = from_zoobot(
    "gz_ukidss",
    {"smooth-or-featured": ["smooth", "featured-or-disk", "artifact"],
     "disk-edge-on": ["yes", "no"],
     "has-spiral-arms": ["yes", "no"],
     "bar": ["yes", "no"],
     "bulge-size": ["dominant", "obvious", "just-noticeable", "no"],
     "something-odd": ["yes", "no"],
     "how-rounded": ["round", "in-between", "cigar"],
     "bulge-shape": ["round", "boxy", "no-bulge"],
     "spiral-winding": ["tight", "medium", "loose"],
     "spiral-arm-count": ["1", "2", "3", "4", "more-than-4", "cant-tell"]},
    {"smooth-or-featured": None, "disk-edge-on": "smooth-or-featured_featured-or-disk",
     "has-spiral-arms": "smooth-or-featured_featured-or-disk", "bar": "smooth-or-featured_featured-or-disk",
     "bulge-size": "smooth-or-featured_featured-or-disk", "something-odd": None,
     "how-rounded": "smooth-or-featured_smooth", "bulge-shape": "disk-edge-on_yes",
     "spiral-winding": "has-spiral-arms_yes", "spiral-arm-count": "has-spiral-arms_yes"},
    (Flag("odd", (("something_odd", "yes"),)),),
    "GZ UKIDSS (GZ2-like; Zoobot's layout)")

TREES: dict[str, Schema] = {t.name: t for t in (GZ2, GZ_DESI, GZ_EUCLID, GZ_CANDELS, GZ_HUBBLE, GZ_JWST, GZ_UKIDSS)}
"""Built-in trees by name."""


def get_tree(name: str) -> Schema:
    if name not in TREES:
        raise KeyError(f"unknown tree {name!r}; built in: {', '.join(TREES)}")
    return TREES[name]


def tree_reference(tree: Schema) -> str | dict[str, Any]:
    """What model metadata stores: a built-in tree's name, or the whole tree when it is not built in."""
    return tree.name if TREES.get(tree.name) == tree else tree.to_dict()


def resolve_tree(reference: str | dict[str, Any] | None) -> Schema:
    """The tree a model's metadata names (a built-in name) or embeds (a dict); None means GZ2
    (models exported before trees were data)."""
    if reference is None:
        return GZ2
    if isinstance(reference, str):
        return get_tree(reference)
    return Schema.from_dict(reference)


def match_builtin(tree: Schema) -> Schema | None:
    """The built-in tree with the same questions, answers, order and dependencies, if any."""
    def shape(t: Schema) -> list:
        return [(q.name, q.answer_names, q.parent) for q in t.questions]

    return next((t for t in TREES.values() if shape(t) == shape(tree)), None)
