"""docs/catalog-schema.md against what the writer builds: column order, types, metadata keys, trees."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from galaxy_infer.catalog import Layout, arrow_schema, file_metadata
from galaxy_infer.model import load_model_info
from galaxy_infer.schema import GZ2
from galaxy_infer.trees import TREES

DOC = (Path(__file__).resolve().parents[1] / "docs" / "catalog-schema.md").read_text()
INTERVAL_ONLY = ("_concentration", "_fraction_q05", "_fraction_q95")


def section(title: str) -> str:
    return DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("|---")][1:]


def documented_columns() -> list[tuple[str, str]]:
    return [(row[0].strip("`"), row[1]) for row in table_rows(section("Columns, in order"))]


def expand(template: str, layout: Layout) -> list[str]:
    tree = layout.tree
    if template == "{question}_{answer}_fraction":
        return list(tree.answer_columns)
    if template == "{question}_proportion_asked":
        return list(tree.asked_columns)
    if template.startswith("{flag}_"):
        return [f"{f.column}_{template.removeprefix('{flag}_')}" for f in layout.flag_list]
    if template.startswith("{question}_{answer}_"):
        if not layout.intervals:
            return []
        suffix = template.removeprefix("{question}_{answer}")
        return [c.removesuffix("_fraction") + suffix for c in tree.answer_columns]
    return [template]


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("intervals", [False, True])
def test_documented_column_order_and_types_are_the_writers(tree, intervals):
    layout = Layout(TREES[tree], intervals=intervals)
    schema = arrow_schema(layout=layout)
    names = [n for template, _ in documented_columns() for n in expand(template, layout)]
    assert names == schema.names
    types = {n: t for template, t in documented_columns() for n in expand(template, layout)}
    assert {n: types[n] for n in schema.names} == {f.name: str(f.type) for f in schema}


def test_gz2_worked_example_lists_every_column_of_the_bundled_models_catalog():
    block = section("Worked example: the GZ2 tree (the bundled model)").split("```text\n", 1)[1].split("```", 1)[0]
    listed = [tuple(line.split()) for line in block.strip().splitlines()]
    layout = Layout.from_metadata(file_metadata(load_model_info("galaxy_infer/models/default.onnx"), "run"))
    assert layout.tree == GZ2
    assert listed == [(f.name, str(f.type)) for f in arrow_schema(layout=layout)]


def test_every_metadata_key_is_documented():
    keys = set(re.findall(r"`(galaxy_infer\.[a-z_0-9]+)`", section("File-level metadata")))
    written = set(file_metadata(load_model_info("galaxy_infer/models/default.onnx"), "run"))
    assert written == keys


def test_built_in_tree_table_matches_the_trees():
    rows = {row[0].split("`")[1]: (int(row[1]), int(row[2])) for row in table_rows(section("Built-in trees"))
            if row[1].isdigit()}
    assert rows == {t.name: (len(t.questions), t.n_answers) for t in TREES.values()}
