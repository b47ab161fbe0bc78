"""Summary of real catalogs: a classify output, an ingest root with partitions, and a list of files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from galaxy_infer.cli import main
from galaxy_infer.galaxy10 import CLASSES
from galaxy_infer.summary import format_summary, summarize
from tests.catalogs import build_catalog, gz2_manifest

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def catalog(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("summary")
    extra = [{"path": str(folder / f"gone{i}.jpg"), "object_id": f"gone{i}"} for i in range(3)]
    extra.append({"path": str(shared_data / "gz2_votes" / "labels.csv"), "object_id": "not_an_image"})
    return build_catalog(gz2_manifest(shared_data, 30, folder, extra), folder / "catalog")


def test_counts_errors_flags_fractions_and_run(catalog):
    s = summarize(catalog)
    frame = pd.read_parquet(catalog)
    ok = frame[frame.status == "ok"]
    assert (s["rows"], s["ok"], s["errors"], s["files"]) == (34, 30, 4, 1)
    assert s["errors_by_reason"]["file not found"] == 3 and sum(s["errors_by_reason"].values()) == 4
    flags = [c for c in frame.columns if c.endswith("_flag")]
    assert list(s["flags"]) == flags
    for c in flags:
        assert s["flags"][c]["flagged"] == int(ok[c].sum())
    smooth = s["fractions"]["smooth_or_featured_smooth_fraction"]
    assert smooth["q50"] == pytest.approx(ok.smooth_or_featured_smooth_fraction.median(), abs=1e-4)
    assert smooth["mean"] == pytest.approx(ok.smooth_or_featured_smooth_fraction.mean(), abs=1e-4)
    assert list(s["galaxy10"]) == list(CLASSES) and sum(s["galaxy10"].values()) == 30
    (run,) = s["runs"]
    assert run["run_id"] == frame.run_id[0] and run["rows"] == 34 and run["model_id"] == frame.model_id[0]
    assert run["recipe"]["input_size"] == 64 and set(run["thresholds"]) >= {"ring", "merger"}
    text = format_summary(s)
    assert "rows: 34  ok: 30  errors: 4 (11.8%)" in text and "3  file not found" in text
    assert "odd_ring_flag" in text and "round smooth" in text and run["run_id"] in text


def test_ingest_root_partitions_and_file_lists(catalog, tmp_path):
    root = tmp_path / "ingest"
    for date in ("2026-11-20", "2026-11-21"):
        (root / f"ingest_date={date}").mkdir(parents=True)
        shutil.copy(next(catalog.glob("part-*.parquet")), root / f"ingest_date={date}" / "part-x-00000.parquet")
    (root / ".ingest.lock").write_text("1\n")
    (root / "_ingest_runs").mkdir()
    (root / "_ingest_runs" / "x.json").write_text("{}")
    s = summarize(root)
    assert s["rows"] == 68 and s["partitions"] == {"ingest_date": {"2026-11-20": 34, "2026-11-21": 34}}
    assert "ingest_date: 2026-11-20 (34)  2026-11-21 (34)" in format_summary(s)
    one = summarize([str(p) for p in root.glob("ingest_date=2026-11-21/*.parquet")])
    assert one["rows"] == 34 and "partitions" not in one


def test_cli_summary_json(catalog, capsys):
    assert main(["summary", str(catalog), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 34
    assert main(["summary", str(catalog.parent / "nothing-here")]) == 1


def test_a_folder_of_two_models_files_opens_with_both_trees_columns(catalog, tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "mixed"
    folder.mkdir()
    part = next(catalog.glob("part-*.parquet"))
    shutil.copy(part, folder / "part-00000.parquet")
    table = pq.read_table(part)  # another model's file: its tree answers another question
    names = ["other_tree_yes_fraction" if n == "smooth_or_featured_smooth_fraction" else n for n in table.column_names]
    pq.write_table(table.rename_columns(names), folder / "part-00001.parquet")
    s = summarize(folder)
    assert s["rows"] == 68 and s["files"] == 2
    assert {"smooth_or_featured_smooth_fraction", "other_tree_yes_fraction"} <= set(s["fractions"])
