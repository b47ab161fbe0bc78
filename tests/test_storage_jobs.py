"""The jobs with inputs and outputs only in a real S3-compatible server (SeaweedFS on 127.0.0.1):
the nightly ingest killed mid-run and rerun (every object exactly once), the batch job on a head +
2-worker Ray cluster with no shared disk, and what the ingest does with "cannot read now" rows."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galaxy_infer import storage
from galaxy_infer.catalog import SUMMARY_NAME, catalog_table, read_catalog
from galaxy_infer.cli import EXIT_OK
from galaxy_infer.errors import TRANSIENT_PREFIX, ErrorKind
from galaxy_infer.ingest import committed_files, held_objects, part_target, read_ingest_catalog
from tests.ray_procs import kill_when, write_night
from tests.test_storage import new_bucket, put

ROOT = Path(__file__).resolve().parents[1]
INGEST = ROOT / "jobs" / "nightly_ingest.py"
BATCH = ROOT / "jobs" / "classify_catalog.py"


def upload(server, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            put(server, f"{prefix}/{path.relative_to(folder)}", path.read_bytes())


def test_ingest_defers_objects_that_cannot_be_read_now_and_does_not_hold_them(tmp_path):
    ids = {"object_id": ["a", "b", "c"], "source_path": ["a.jpg", "b.jpg", "c.jpg"], "ra": [None] * 3,
           "dec": [None] * 3}
    reasons = [f"{TRANSIENT_PREFIX}permission denied", "truncated JPEG", f"{TRANSIENT_PREFIX}i/o error"]
    kinds = [ErrorKind.UNREADABLE_NOW, None, ErrorKind.UNREADABLE_NOW]
    table = catalog_table(ids, reasons, None, "m", "r1", kinds=kinds)
    target = part_target(str(tmp_path), "2026-01-01", {}, "r1")
    record = target.write(table, 0)
    assert (record["deferred"], record["rows"], record["ok"]) == (2, 1, 0)
    assert record["errors"]["errors_by_kind"] == {"unreadable-now": 2, "corrupt": 1}
    assert read_ingest_catalog(tmp_path).num_rows == 0  # staged, not yet published
    target.publish(record["part"])
    assert read_ingest_catalog(tmp_path).column("object_id").to_pylist() == ["b"]
    # Catalogs that already hold such rows (written before they were withheld, schema version 1 without
    # error_kind, or version 2) do not hold those objects.
    for name, old in (("v1", table.drop_columns(["error_kind"])), ("v2", table)):
        storage.write_object_atomic(str(tmp_path / "ingest_date=2026-01-02" / f"part-{name}.parquet"),
                                    lambda s, old=old: pq.write_table(old, s))
        with held_objects(str(tmp_path), "m").scan(con := duckdb.connect(), "held"):
            assert set(con.sql("SELECT object_id, source_path FROM held").fetchall()) == {("b", "b.jpg")}


@pytest.mark.ray
def test_nightly_ingest_on_s3_killed_mid_run_then_rerun_holds_every_object_exactly_once(s3, tmp_path, tiny_model):
    bucket = new_bucket(s3)
    inbox, catalog = f"s3://{bucket}/inbox", f"s3://{bucket}/catalog"
    expected = set(write_night(tmp_path / "scratch", "2026-11-20", 40, seed=1, size=256))
    upload(s3, tmp_path / "scratch", f"{bucket}/inbox")
    put(s3, f"{bucket}/inbox/2026-11-20/broken.jpg", b"\xff\xd8\xff not really")
    expected.add("broken")
    common = ["--inbox", inbox, "--catalog", catalog, "--model", str(tiny_model), "--settle-seconds", "0",
              "--num-cpus", "2", "--object-store-mb", "256", "--json", "--date", "2026-11-20"]
    env = s3.env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, str(INGEST), *common, "--chunk-rows", "4", "--batch-size", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, stderr = kill_when(proc, lambda: committed_files(catalog))
    assert first and proc.returncode == -signal.SIGKILL, stderr[-3000:]
    after_kill = read_ingest_catalog(catalog).num_rows
    assert 0 < after_kill < len(expected), "the kill did not land part-way"

    # The killed run's lease is still live, but it was written on this host by a process that is gone:
    # a rerun right away takes it over (another host's rerun would wait LEASE_SECONDS; see test_storage).
    assert storage.list_uris(f"{catalog}/.ingest.lock")
    rerun = subprocess.run([sys.executable, str(INGEST), *common, "--chunk-rows", "64"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["already_held"] == after_kill and summary["rows"] == len(expected) - after_kill
    again = subprocess.run([sys.executable, str(INGEST), *common], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == EXIT_OK and json.loads(again.stdout)["pending"] == 0
    table = read_ingest_catalog(catalog)
    ids = table.column("object_id").to_pylist()
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    broken = table.filter(pa.compute.equal(table.column("object_id"), "broken"))
    assert broken.column("status").to_pylist() == ["error"]
    assert storage.list_uris(f"{catalog}/.ingest.lock") == []
    assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in rerun.stdout + rerun.stderr


@pytest.mark.ray
@pytest.mark.shared_data
def test_batch_job_on_a_cluster_with_no_shared_disk_reads_and_writes_only_s3(s3, tmp_path, shared_data, tiny_model,
                                                                            monkeypatch):
    from ray.cluster_utils import Cluster

    # This test is about storage; auth is tested in test_auth/test_jobs. The in-process Cluster's
    # processes and the job's client must agree, and this process's Ray read its auth mode at
    # import, so both run without auth (a token left by an earlier test's local Ray would hang
    # the job's client on a cluster it cannot join).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    import ray

    ray.shutdown()  # the session's local Ray, if an earlier test started one, must not meet this cluster
    bucket = new_bucket(s3)
    images = sorted((shared_data / "gz1_sdss" / "images").iterdir())[:24]
    for path in images:
        put(s3, f"{bucket}/cutouts/{path.name}", path.read_bytes())
    put(s3, f"{bucket}/cutouts/truncated.jpg", images[0].read_bytes()[:1500])
    put(s3, f"{bucket}/cutouts/empty.jpg", b"")
    out = f"s3://{bucket}/catalogs/run-1"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": 128 * 1024 * 1024})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=128 * 1024 * 1024)
        cluster.wait_for_nodes()
        env = s3.env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        done = subprocess.run([sys.executable, str(BATCH), "--input", f"s3://{bucket}/cutouts/", "--output", out,
                               "--model", str(tiny_model), "--address", cluster.address, "--batch-size", "8"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        cluster.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    table = read_catalog(out)
    assert table.num_rows == len(images) + 2
    errors = dict(zip(table.column("object_id").to_pylist(), table.column("error").to_pylist()))
    assert errors["truncated"] == "truncated JPEG" and errors["empty"] == "empty file (0 bytes)"
    assert sum(e is None for e in errors.values()) == len(images)
    summary = json.loads(storage.read_bytes(f"{out}/{SUMMARY_NAME}"))
    assert summary["output"] == out and summary["rows"] == len(images) + 2
    assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in json.dumps(summary) + str(table.schema.metadata)
