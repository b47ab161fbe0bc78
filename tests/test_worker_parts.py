"""Tasks write their own parts into the run's stage; the driver counts records and commits.

Through a real local Ray and real SeaweedFS: a chunk's task run twice leaves one part, what a dead
task left in the stage never reaches the catalog, a killed run leaves nothing that reads as rows,
and worker-written parts carry the catalog's file metadata. The nightly ingest's tasks stage their
parts in the partition: a task that staged and died adds no rows, and the driver keeps no state per object.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from galaxy_infer import storage
from galaxy_infer.catalog import SUMMARY_NAME, CatalogWriter, PartTarget, catalog_table, file_metadata, read_catalog
from galaxy_infer.errors import ErrorKind
from galaxy_infer.ingest import PartPublisher, committed_files, part_target, read_ingest_catalog
from galaxy_infer.model import load_model_info
from galaxy_infer.pipeline import PredictorSpec, classify_chunk, records_table
from galaxy_infer.summary import summarize
from galaxy_infer.synthetic import write_sample
from galaxy_infer.workers import DEVICES_METADATA_KEY
from tests.ray_procs import kill_when
from tests.test_storage import new_bucket

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_a_chunk_task_run_twice_leaves_one_part_and_strays_in_the_stage_never_reach_the_catalog(
        tmp_path, tiny_model, local_ray):
    ray = local_ray
    write_sample(tmp_path / "in", n=5, seed=2, size=64)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    records = records_table([str(tmp_path / "in")])
    n = records.num_rows
    info = load_model_info(str(tiny_model))
    spec = PredictorSpec(info.model_id, str(tiny_model), "cpu", 4, 1, ray.put(tiny_model.read_bytes()))
    out = tmp_path / "cat"
    with CatalogWriter(out, file_metadata(info, "r1"), "r1") as writer:
        sink = writer.part_target()
        task = ray.remote(classify_chunk)
        first, again = ray.get([task.remote(records.slice(0, 3), info.recipe, spec, "r1", sink, 0) for _ in range(2)])
        rest = ray.get(task.remote(records.slice(3), info.recipe, spec, "r1", sink, 3))
        assert first == {**again, "stage_seconds": first["stage_seconds"]}
        assert sorted(os.listdir(writer.stage)) == ["part-000000000000-3.parquet", f"part-000000000003-{n - 3}.parquet"]
        assert first["rows"] + rest["rows"] == n and set(first["worker"]) >= {"kind", "device", "node"}
        # What a task killed part-way leaves: its temp file, or the part of a chunk that was then split;
        # and what a task Ray gave up on writes late: the whole chunk, of which the parts above are pieces.
        Path(writer.stage, ".part-000000000001-2.parquet.tmp").write_bytes(b"PAR1 torn")
        Path(writer.stage, "part-000000000001-2.parquet").write_bytes(b"PAR1 torn")
        ray.get(task.remote(records, info.recipe, spec, "r1", sink, 0))
        for record in (first, rest):
            writer.add_part(record)
        summary = writer.stats.summary(inputs=n)
        writer.commit(summary)
    assert sorted(os.listdir(out)) == [SUMMARY_NAME, "part-000000000000-3.parquet", f"part-000000000003-{n - 3}.parquet"]
    table = read_catalog(out)
    assert table.num_rows == n and len(set(table.column("object_id").to_pylist())) == n
    assert summary["rows"] == n and summary["ok"] == n - 1 and summary["errors_by_kind"] == {"corrupt": 1}
    kind = first["worker"]["kind"]
    assert summary["prediction_workers"][kind]["rows"] == n and set(summary["stage_seconds"]) >= {"predict", "write"}
    meta = {k.decode(): v.decode() for k, v in pq.read_metadata(out / f"part-000000000003-{n - 3}.parquet").metadata.items()}
    expected = file_metadata(info, "r1")
    assert {k: meta[k] for k in expected if k != "galaxy_infer.created_utc"} == {
        k: v for k, v in expected.items() if k != "galaxy_infer.created_utc"}
    assert meta["galaxy_infer.schema_version"] == "2"
    assert json.loads(meta[DEVICES_METADATA_KEY])[kind]["rows"] == rest["rows"]
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/*.parquet')").fetchall()[0][0] == n
    described = summarize(str(out))
    assert described["rows"] == n and described["errors_by_kind"] == {"corrupt": 1}
    assert described["runs"][0]["schema_version"] == "2"


def test_on_s3_a_part_written_again_replaces_itself(s3, tmp_path):
    bucket = new_bucket(s3)
    sink = PartTarget(f"s3://{bucket}/.cat.tmp-r1", {"galaxy_infer.run_id": "r1"})
    ids = {"object_id": ["a", "b"], "source_path": ["a.jpg", "b.jpg"], "ra": [None] * 2, "dec": [None] * 2}
    table = catalog_table(ids, [None, "no colon here"], None, "m", "r1", kinds=[None, ErrorKind.NOT_FOUND])
    first = sink.write(table, 1024)
    again = sink.write(table, 1024)
    assert first["part"] == again["part"] == "part-000000001024-2.parquet"
    assert storage.list_uris(sink.stage) == [f"s3://{bucket}/.cat.tmp-r1/part-000000001024-2.parquet"]
    assert first["errors"]["errors_by_kind"] == {"not-found": 1} and first["ok"] == 1 and first["worker"] is None
    assert read_catalog(sink.uri(1024, 2)).column("error_kind").to_pylist() == [None, "not-found"]


@pytest.mark.ray
def test_a_run_killed_after_tasks_wrote_parts_leaves_nothing_that_reads_as_rows(tmp_path, tiny_model):
    write_sample(tmp_path / "in", n=60, seed=4, size=64)
    out = tmp_path / "cat"
    script = ("import sys; from galaxy_infer.pipeline import RunConfig, classify; "
              "classify(RunConfig(inputs=[sys.argv[1]], out=sys.argv[2], model=sys.argv[3], task_rows=1, "
              "batch_size=1, num_cpus=2, object_store_mb=256, progress=False))")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "in"), str(out), str(tiny_model)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stages, stderr = kill_when(proc, lambda: list(tmp_path.glob(".cat.tmp-*/part-*.parquet")))
    assert stages and proc.returncode == -signal.SIGKILL, stderr[-3000:]
    assert not out.exists()
    assert not list(tmp_path.glob(f".cat.tmp-*/{SUMMARY_NAME}"))  # the stage is hidden and never complete
    # The next run on the output removes the killed run's stage and writes the whole catalog.
    rerun = subprocess.run([sys.executable, "-m", "galaxy_infer.cli", "classify", str(tmp_path / "in"), "--out",
                            str(out), "--model", str(tiny_model), "--num-cpus", "2", "--no-progress"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert read_catalog(out).num_rows == records_table([str(tmp_path / "in")]).num_rows and not list(tmp_path.glob(".cat.tmp-*"))


@pytest.mark.ray
def test_ingest_parts_of_a_task_retried_or_split_after_staging_hold_each_row_once(tmp_path, tiny_model, local_ray):
    ray = local_ray
    write_sample(tmp_path / "in", n=7, seed=3, size=64)
    records = records_table([str(tmp_path / "in")])
    info = load_model_info(str(tiny_model))
    spec = PredictorSpec(info.model_id, str(tiny_model), "cpu", 4, 1, ray.put(tiny_model.read_bytes()))
    catalog = tmp_path / "catalog"
    target = part_target(str(catalog), "2026-11-20", file_metadata(info, "r1"), "r1")
    task = ray.remote(classify_chunk)
    # The whole chunk's task staged its part and died before its record reached the driver.
    ray.get(task.remote(records, info.recipe, spec, "r1", target, 0))
    assert not committed_files(str(catalog)) and read_ingest_catalog(catalog).num_rows == 0
    # Its halves, the first one tried twice, stage beside it under their own names; the whole chunk's
    # staged part is never published, and it goes when the run's publishing ends.
    half = (records.num_rows + 1) // 2
    first, again, rest = ray.get([task.remote(records.slice(0, half), info.recipe, spec, "r1", target, 0),
                                  task.remote(records.slice(0, half), info.recipe, spec, "r1", target, 0),
                                  task.remote(records.slice(half), info.recipe, spec, "r1", target, half)])
    assert first["part"] == again["part"] == f"part-r1-000000000000-{half}.parquet"
    with PartPublisher(target) as publisher:
        for record in (first, rest):
            publisher.accept(record)
        publisher.close()
    assert sorted(os.listdir(catalog / "ingest_date=2026-11-20")) == [
        f"part-r1-000000000000-{half}.parquet", f"part-r1-{half:012d}-{records.num_rows - half}.parquet"]
    ids = read_ingest_catalog(catalog).column("object_id").to_pylist()
    assert sorted(ids) == sorted(records.column("object_id").to_pylist()) and publisher.rows == len(ids)


def test_the_ingest_driver_keeps_counters_and_part_names_whatever_the_objects(tmp_path):
    def publisher_state(rows: int) -> dict[str, object]:
        catalog = tmp_path / f"catalog-{rows}"
        target = part_target(str(catalog), "2026-11-20", {}, "r1")
        with PartPublisher(target) as publisher:
            for start in range(0, 3 * rows, rows):
                names = [f"o{i}" for i in range(start, start + rows)]
                ids = {"object_id": names, "source_path": names, "ra": [None] * rows, "dec": [None] * rows}
                publisher.accept(target.write(catalog_table(ids, ["bad"] * rows, None, "m", "r1"), start))
            publisher.close()
        assert publisher.rows == read_ingest_catalog(catalog).num_rows == 3 * rows
        return {k: len(v) if isinstance(v, (list, set, dict, tuple)) else type(v).__name__
                for k, v in vars(publisher).items()}

    small, large = publisher_state(2), publisher_state(2000)
    assert small == large and small["files"] == 3  # one name per part, nothing per object
