"""The run summary: errors grouped by kind, bounded whatever the number of distinct messages."""
import json

from galaxy_infer.catalog import RunStats, catalog_table, error_kind


def test_error_summary_stays_small_however_many_distinct_messages():
    stats = RunStats()
    n = 5000
    errors = [f"corrupt JPEG: bad Huffman code at byte {i}" if i % 2 else f"unexpected KeyError while decoding: {i}"
              for i in range(n)]
    ids = {"object_id": [str(i) for i in range(n)], "source_path": [f"/in/{i}.jpg" for i in range(n)],
           "ra": [None] * n, "dec": [None] * n}
    stats.add(catalog_table(ids, errors, None, "m", "r"))
    summary = stats.summary()
    assert summary["errors_by_reason"] == {"corrupt JPEG": n // 2, "unexpected KeyError while decoding": n // 2}
    examples = summary["error_examples"]
    assert examples["corrupt JPEG"][0] == {"source_path": "/in/1.jpg",
                                           "error": "corrupt JPEG: bad Huffman code at byte 1"}
    assert set(examples) == set(summary["errors_by_reason"]) and all(len(v) == 3 for v in examples.values())
    assert len(json.dumps(stats.summary())) < 2000


def test_error_kind_drops_the_particulars():
    assert error_kind("image over the 100 megapixel limit: 12000x12000 pixels") == "image over the 100 megapixel limit"
    assert error_kind("truncated JPEG") == "truncated JPEG"


def test_error_kind_keeps_reasons_that_the_bytes_could_not_be_read_now_apart():
    assert error_kind("cannot read now: permission denied") == "cannot read now: permission denied"
    reason = "cannot read now: read failed: AWS Error NETWORK_CONNECTION ..."
    assert error_kind(reason) == "cannot read now: read failed"
    assert error_kind("cannot read file: Is a directory") == "cannot read file"
