"""The run summary: errors grouped by kind, bounded whatever the number of distinct messages."""
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from galaxy_infer.catalog import ErrorTally, RunStats, catalog_table, read_catalog, reason_head, unreadable_now
from galaxy_infer.errors import ErrorKind
from galaxy_infer.ingest import held_objects, read_ingest_catalog
from galaxy_infer.summary import summarize


def ids_for(n: int) -> dict[str, list]:
    return {"object_id": [str(i) for i in range(n)], "source_path": [f"/in/{i}.jpg" for i in range(n)],
            "ra": [None] * n, "dec": [None] * n}


def test_error_summary_stays_small_however_many_distinct_messages():
    stats = RunStats()
    n = 5000
    errors = [f"corrupt JPEG: bad Huffman code at byte {i}" if i % 2 else f"unexpected KeyError while decoding: {i}"
              for i in range(n)]
    stats.add(catalog_table(ids_for(n), errors, None, "m", "r"))
    summary = stats.summary()
    assert summary["errors_by_reason"] == {"corrupt JPEG": n // 2, "unexpected KeyError while decoding": n // 2}
    assert summary["errors_by_kind"] == {"corrupt": n}
    assert summary["error_examples"]["corrupt"][0] == {"source_path": "/in/0.jpg",
                                                       "error": "unexpected KeyError while decoding: 0"}
    assert len(summary["error_examples"]["corrupt"]) == 3
    assert len(json.dumps(stats.summary())) < 2000


def test_reasons_without_a_colon_keep_the_summary_bounded():
    stats = RunStats()
    n = 10_000
    kinds = [ErrorKind.NOT_FOUND if i % 3 else ErrorKind.TOO_LARGE for i in range(n)]
    stats.add(catalog_table(ids_for(n), [f"no colon in reason number {i}" for i in range(n)], None, "m", "r",
                            kinds=kinds))
    summary = stats.summary()
    assert summary["errors"] == n and summary["ok"] == 0
    assert summary["errors_by_kind"] == {"not-found": 6666, "too-large": 3334}
    assert len(summary["errors_by_reason"]) == 10 and summary["other_error_reasons"] == n - 10
    assert all(len(e) == 3 for e in summary["error_examples"].values())
    assert len(json.dumps(summary)) < 4000


def test_tallies_sent_as_records_add_up_like_the_rows():
    n = 400
    table = catalog_table(ids_for(n), [None if i % 2 else f"bad {i}" for i in range(n)], None, "m", "r",
                          kinds=[ErrorKind.UNSUPPORTED] * n)
    whole, merged = ErrorTally(), ErrorTally()
    whole.add(table)
    for start in range(0, n, 64):
        piece = ErrorTally()
        piece.add(table.slice(start, 64))
        merged.merge(json.loads(json.dumps(piece.to_dict())))
    assert merged.to_dict(10) == whole.to_dict(10)
    assert merged.to_dict(10)["errors_by_kind"] == {"unsupported": n // 2}
    assert merged.to_dict(10)["other_error_reasons"] == n // 2 - 10


def test_error_kind_column_is_null_on_ok_rows_and_corrupt_unless_set():
    table = catalog_table(ids_for(3), [None, "truncated JPEG", "file not found"], None, "m", "r",
                          kinds=[None, None, ErrorKind.NOT_FOUND])
    assert table.column("error_kind").to_pylist() == [None, "corrupt", "not-found"]
    assert table.schema.names.index("error_kind") == table.schema.names.index("error") + 1


def test_unreadable_now_reads_the_kind_and_schema_1_files_by_their_prefix():
    reasons = ["cannot read now: permission denied", "corrupt JPEG: x", None]
    v2 = catalog_table(ids_for(3), reasons, None, "m", "r", kinds=[ErrorKind.UNREADABLE_NOW, None, None])
    assert unreadable_now(v2).to_pylist() == [True, False, False]
    v1 = pa.table({"error": reasons})
    assert unreadable_now(v1).to_pylist() == [True, False, False]


def test_reason_head_drops_the_particulars():
    assert reason_head("image over the 100 megapixel limit: 12000x12000 pixels") == "image over the 100 megapixel limit"
    assert reason_head("truncated JPEG") == "truncated JPEG"
    assert reason_head("cannot read now: permission denied") == "cannot read now: permission denied"
    assert reason_head("cannot read now: read failed: AWS Error NETWORK_CONNECTION ...") == "cannot read now: read failed"


def test_schema_1_catalogs_without_error_kind_still_read_and_summarise(tmp_path):
    reasons = [None, "truncated JPEG", "cannot read now: permission denied"]
    v2 = catalog_table(ids_for(3), reasons, None, "m", "r2", kinds=[None, None, ErrorKind.UNREADABLE_NOW])
    v1 = v2.drop_columns(["error_kind"])
    (tmp_path / "old").mkdir()
    pq.write_table(v1, tmp_path / "old" / "part-00000.parquet")
    assert read_catalog(tmp_path / "old").column_names == v1.column_names
    described = summarize(str(tmp_path / "old"))
    assert described["errors"] == 2 and "errors_by_kind" not in described
    stats = RunStats()
    stats.add(v1)
    assert stats.summary()["errors_by_kind"] == {"corrupt": 2}
    for night, table in (("2026-01-01", v1), ("2026-01-02", v2)):
        (tmp_path / "ingest" / f"ingest_date={night}").mkdir(parents=True)
        pq.write_table(table, tmp_path / "ingest" / f"ingest_date={night}" / "part-a.parquet")
    both = read_ingest_catalog(tmp_path / "ingest")
    assert both.num_rows == 6 and both.column("error_kind").to_pylist() == [None] * 3 + [None, "corrupt", "unreadable-now"]
    with held_objects(str(tmp_path / "ingest"), "m").scan(con := duckdb.connect(), "held"):
        assert sorted(con.sql("SELECT DISTINCT object_id, source_path FROM held").fetchall()) == [
            ("0", "/in/0.jpg"), ("1", "/in/1.jpg")]
