"""Nightly ingest: the catalog is the ledger, chunks commit atomically, the lock keeps runs apart.

The three-nights test runs ``jobs/nightly_ingest.py`` as a process, kills the first night's run
with SIGKILL once its first chunk is committed, reruns it, and reruns a finished night.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from galaxy_infer.cli import EXIT_LOCKED, EXIT_OK
from galaxy_infer.ingest import (LOCK_NAME, IngestConfig, committed_files, ingest,
                                 read_ingest_catalog)
from tests.ray_procs import kill_when, write_night

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "nightly_ingest.py"


def run_job(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, str(JOB), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def test_locked_catalog_exits_75_and_leaves_it_alone(tmp_path, tiny_model):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (tmp_path / "inbox").mkdir()
    fd = os.open(catalog / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = run_job("--inbox", str(tmp_path / "inbox"), "--catalog", str(catalog), "--model", str(tiny_model))
    finally:
        os.close(fd)
    assert done.returncode == EXIT_LOCKED, done.stderr
    assert "another ingest" in done.stderr
    assert not committed_files(catalog)


def test_nothing_to_do_removes_stale_temp_files_and_exits_0(tmp_path, tiny_model):
    catalog = tmp_path / "catalog"
    stale = catalog / "ingest_date=2026-01-01" / ".part-dead-00000.parquet.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a parquet file")
    (tmp_path / "inbox").mkdir()
    summary = ingest(IngestConfig(inbox=str(tmp_path / "inbox"), catalog=str(catalog), model=str(tiny_model),
                                  date="2026-01-02"))
    assert summary["rows"] == 0 and summary["stale_temp_files_removed"] == 1
    assert not stale.exists()


def test_bad_date_and_missing_inbox_fail_with_1(tmp_path, tiny_model):
    bad = run_job("--inbox", str(tmp_path), "--catalog", str(tmp_path / "c"), "--date", "2026-13-40",
                  "--model", str(tiny_model))
    missing = run_job("--inbox", str(tmp_path / "nope"), "--catalog", str(tmp_path / "c"),
                      "--model", str(tiny_model))
    assert (bad.returncode, missing.returncode) == (1, 1)


def test_files_still_arriving_wait_for_the_next_run(tmp_path, tiny_model):
    write_night(tmp_path / "inbox", "2026-11-20", 2, seed=3)
    summary = ingest(IngestConfig(inbox=str(tmp_path / "inbox"), catalog=str(tmp_path / "catalog"),
                                  model=str(tiny_model), settle_seconds=3600))
    assert summary["unsettled"] == 3 and summary["rows"] == 0


def test_empty_catalog_takes_the_models_columns_and_the_model_picks_the_batch_size(tmp_path, tiny_model):
    from galaxy_infer.catalog import Layout, arrow_schema, catalog_table, file_metadata
    from galaxy_infer.ingest import part_target
    from galaxy_infer.model import load_model_info, metadata_document
    from galaxy_infer.pipeline import RunConfig, run_sizes
    from galaxy_infer.preprocess import Recipe
    from galaxy_infer.trees import GZ_DESI
    from tests.onnx_models import build_tiny_model

    doc = metadata_document("desi", "1", Recipe(), {"merger": 0.4, "major_disturbance": 0.6}, GZ_DESI,
                            output_kind="dirichlet", runtime={"batch_size": 16, "task_rows": 64})
    desi = build_tiny_model(tmp_path / "desi.onnx", metadata=doc, outputs=GZ_DESI.n_answers)
    info = load_model_info(desi)
    empty = read_ingest_catalog(tmp_path / "catalog", model=str(desi))
    assert empty.num_rows == 0
    assert empty.column_names == arrow_schema(layout=Layout.of(info)).names + ["ingest_date"]
    assert "bar_strong_fraction" in empty.column_names and "bar_yes_fraction" not in empty.column_names  # not GZ2
    assert read_ingest_catalog(tmp_path / "catalog").column_names == [
        "object_id", "source_path", "ra", "dec", "status", "error", "error_kind", "model_id", "run_id", "ingest_date"]

    config = IngestConfig(inbox=str(tmp_path), catalog=str(tmp_path / "catalog"), model=str(desi))
    run = RunConfig(inputs=[], out="", model=str(desi), batch_size=config.batch_size, task_rows=config.task_rows)
    assert run_sizes(info, run) == (16, 64)

    # After a model change the catalog holds both trees' rows: each file's missing columns read as null.
    ids = {"object_id": ["a"], "source_path": ["a.jpg"], "ra": [None], "dec": [None]}
    for model in (load_model_info(tiny_model), info):
        target = part_target(str(tmp_path / "catalog"), "2026-01-01", file_metadata(model, model.name), model.name)
        record = target.write(catalog_table(ids, ["bad"], None, model.model_id, model.name, Layout.of(model)), 0)
        target.publish(record["part"])
    both = read_ingest_catalog(tmp_path / "catalog")
    assert both.num_rows == 2 and {"bar_yes_fraction", "bar_strong_fraction"} <= set(both.column_names)


def unprivileged(command: list[str]) -> list[str]:
    """``command`` without root's right to read any file, so that mode 000 makes a file unreadable as for any user."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv (util-linux): cannot make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *command]


@pytest.mark.ray
def test_a_file_unreadable_for_one_night_is_not_held_and_is_classified_once_readable(tmp_path, tiny_model):
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    ids = write_night(inbox, "2026-11-20", 5, seed=4)
    locked = sorted((inbox / "2026-11-20").glob("*.jpg"))[0]
    locked.chmod(0)  # a cutout delivered with the wrong owner or mode
    fifo = inbox / "2026-11-20" / "stuck.jpg"
    os.mkfifo(fifo)  # never waited on: refused as not a regular file
    common = ["--inbox", str(inbox), "--catalog", str(catalog), "--model", str(tiny_model), "--settle-seconds",
              "0", "--num-cpus", "2", "--object-store-mb", "256", "--json", "--date", "2026-11-20"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.run(unprivileged([sys.executable, str(JOB), *common]), capture_output=True, text=True,
                           timeout=300, env=env, cwd=ROOT)
    table = read_ingest_catalog(catalog)
    rows = dict(zip(table.column("object_id").to_pylist(), table.column("error").to_pylist()))
    assert locked.name.split(".")[0] not in rows, "an unreadable file was recorded (and so never retried)"
    assert rows["stuck"] == "not a regular file (a FIFO, socket or device)"
    summary = json.loads(first.stdout)
    assert summary["retry_next_run"] == 1 and summary["rows"] == len(ids)
    assert summary["errors_by_reason"]["cannot read now: permission denied; make it readable by the user "
                                       "running galaxy-infer"] == 1
    assert summary["errors_by_kind"] == {"unreadable-now": 1, "not-found": 1}
    assert first.returncode == 3  # 2 of 7 objects not classified: cron hears of it

    locked.chmod(0o644)
    second = run_job(*common)
    assert second.returncode == EXIT_OK, second.stderr[-3000:]
    assert json.loads(second.stdout)["rows"] == 1
    table = read_ingest_catalog(catalog)
    assert sorted(table.column("object_id").to_pylist()) == sorted([*ids, "stuck"])
    again = table.filter(pc.equal(table.column("object_id"), locked.name.split(".")[0]))
    assert again.column("status").to_pylist() == ["ok"]


@pytest.mark.ray
def test_three_nights_with_a_sigkill_and_reruns_hold_every_object_exactly_once(tmp_path, tiny_model):
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    nights = {"2026-11-20": 60, "2026-11-21": 12, "2026-11-22": 12}
    expected: dict[str, set[str]] = {}
    common = ["--inbox", str(inbox), "--catalog", str(catalog), "--model", str(tiny_model), "--settle-seconds",
              "0", "--num-cpus", "2", "--object-store-mb", "256", "--json"]
    figures: dict[str, object] = {}

    # Night 1: SIGKILL the ingest process right after its first chunk is committed.
    night = "2026-11-20"
    expected[night] = set(write_night(inbox, night, nights[night], seed=1, size=256))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, str(JOB), *common, "--date", night, "--chunk-rows", "4",
                             "--batch-size", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first, _ = kill_when(proc, lambda: committed_files(catalog), interval=0.02)
    assert first, "no chunk was committed before the timeout"
    assert proc.returncode == -signal.SIGKILL
    after_kill = read_ingest_catalog(catalog)
    figures["rows_committed_before_kill"] = after_kill.num_rows
    assert 0 < after_kill.num_rows < len(expected[night]), "the kill did not land part-way"
    # What a kill inside a chunk write leaves behind; the rerun must remove it.
    (catalog / f"ingest_date={night}" / ".part-killed-00009.parquet.tmp").write_bytes(b"PAR1 torn")

    started = time.perf_counter()
    rerun = run_job(*common, "--date", night, "--chunk-rows", "16")
    figures["rerun_after_kill_seconds"] = round(time.perf_counter() - started, 1)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
    s = json.loads(rerun.stdout)
    assert s["already_held"] == after_kill.num_rows
    assert s["rows"] == len(expected[night]) - after_kill.num_rows
    assert s["stale_temp_files_removed"] >= 1

    # Nights 2 and 3, then a rerun of a finished night changes nothing.
    for seed, night in enumerate(["2026-11-21", "2026-11-22"], start=2):
        expected[night] = set(write_night(inbox, night, nights[night], seed=seed))
        done = run_job(*common, "--date", night)
        assert done.returncode == EXIT_OK, done.stderr[-3000:]
        night_summary = json.loads(done.stdout)
        assert night_summary["rows"] == night_summary["added"]["rows"] == len(expected[night])
        rows = night_summary["rows"]
        assert f" ingested {rows} / {rows} (100.0%) " in done.stderr  # the plain progress line of a log
    files_before = {p: os.stat(p).st_mtime_ns for p in committed_files(catalog)}
    started = time.perf_counter()
    again = run_job(*common, "--date", "2026-11-22")
    figures["rerun_finished_night_seconds"] = round(time.perf_counter() - started, 1)
    assert again.returncode == EXIT_OK
    assert json.loads(again.stdout)["rows"] == 0
    assert {p: os.stat(p).st_mtime_ns for p in committed_files(catalog)} == files_before

    table = read_ingest_catalog(catalog)
    ids = table.column("object_id").to_pylist()
    sent = set().union(*expected.values())
    figures.update(objects_sent=len(sent), rows_written=table.num_rows, duplicates=len(ids) - len(set(ids)),
                   lost=len(sent - set(ids)), runs=len(set(table.column("run_id").to_pylist())))
    print("\nthree-nights figures:", json.dumps(figures))
    assert figures["duplicates"] == 0 and figures["lost"] == 0 and table.num_rows == len(sent)
    assert set(table.column("model_id").to_pylist()) == {"tiny-test-0.0.1"}
    assert set(table.column("status").to_pylist()) == {"ok"}
    by_night = table.select(["object_id", "ingest_date"]).to_pylist()
    for night, objects in expected.items():
        assert {r["object_id"] for r in by_night if r["ingest_date"] == night} == objects
    assert not list(catalog.glob("**/.*.tmp"))

    # All nights at once, as the README tells astronomers.
    import duckdb
    import pandas as pd

    df = pd.read_parquet(catalog)
    assert len(df) == len(sent) and df.groupby("ingest_date", observed=True).size().to_dict() == {
        n: len(o) for n, o in expected.items()}
    glob = str(catalog / "*" / "*.parquet")
    counts = duckdb.sql(f"select ingest_date, count(*) n, count(distinct object_id) d from "
                        f"read_parquet('{glob}', hive_partitioning=true) group by 1 order by 1").fetchall()
    assert [(str(d), n, u) for d, n, u in counts] == [(n, len(o), len(o)) for n, o in sorted(expected.items())]
    meta = pq.read_schema(committed_files(catalog)[0]).metadata
    assert meta[b"galaxy_infer.model_id"] == b"tiny-test-0.0.1"


KILL_AT_SECOND_BATCH = """
import os, sys, time
from pathlib import Path
from galaxy_infer.ingest import IngestConfig, committed_files, ingest
catalog, marker = sys.argv[2], Path(sys.argv[4])
batches = []

def on_batch(rows):  # the second record is in, not yet accepted: wait for the first part's publish, then hang
    batches.append(rows)
    if len(batches) == 2:
        while not committed_files(catalog):
            time.sleep(0.01)
        marker.write_text(str(batches[0]))
        time.sleep(3600)

ingest(IngestConfig(inbox=sys.argv[1], catalog=catalog, model=sys.argv[3], date="2026-11-20", settle_seconds=0,
                    chunk_rows=2, batch_size=2, num_cpus=2, object_store_mb=256, progress=False), on_batch=on_batch)
"""


@pytest.mark.ray
def test_a_driver_killed_after_tasks_staged_parts_leaves_them_unread_and_the_rerun_classifies_them_once(
        tmp_path, tiny_model):
    inbox, catalog, marker = tmp_path / "inbox", tmp_path / "catalog", tmp_path / "second-batch"
    sent = write_night(inbox, "2026-11-20", 11, seed=6, size=64)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_AT_SECOND_BATCH, str(inbox), str(catalog), str(tiny_model),
                             str(marker)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found, stderr = kill_when(proc, marker.exists)
    assert found and proc.returncode == -signal.SIGKILL, stderr[-3000:]
    partition = catalog / "ingest_date=2026-11-20"
    staged = sorted(p.name for p in partition.glob(".part-*.parquet.tmp"))
    assert staged, "no task had staged a part the driver had not accepted"
    assert len(committed_files(catalog)) == 1
    held = read_ingest_catalog(catalog)
    assert held.num_rows == int(marker.read_text())  # the first part's rows; nothing staged reads as rows

    rerun = run_job("--inbox", str(inbox), "--catalog", str(catalog), "--model", str(tiny_model), "--date",
                    "2026-11-20", "--settle-seconds", "0", "--num-cpus", "2", "--object-store-mb", "256", "--json")
    assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["stale_temp_files_removed"] >= len(staged) and summary["already_held"] == held.num_rows
    assert summary["rows"] == len(sent) - held.num_rows
    ids = read_ingest_catalog(catalog).column("object_id").to_pylist()
    assert sorted(ids) == sorted(sent) and not list(partition.glob(".*"))


def test_an_unexpected_exception_logs_its_traceback_for_cron(tmp_path, tiny_model):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "blocker").write_text("a file where a folder above the catalog should be\n")
    done = run_job("--inbox", str(tmp_path / "inbox"), "--catalog", str(tmp_path / "blocker" / "catalog"),
                   "--model", str(tiny_model))
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "nightly_ingest: error:" in done.stderr
    usage = run_job("--inbox", str(tmp_path / "nope"), "--catalog", str(tmp_path / "c"), "--model", str(tiny_model))
    assert usage.returncode == 1 and "Traceback" not in usage.stderr and "nope" in usage.stderr


def test_header_id_collisions_exit_3_every_night_until_fixed(tmp_path, tiny_model):
    from galaxy_infer.synthetic import write_fits_cutout

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("p.fits", "q.fits"):
        write_fits_cutout(inbox / name, np.random.default_rng(1))
        with fits.open(inbox / name, mode="update") as hdul:
            hdul[0].header["OBJID"] = "X1"
    args = ["--inbox", str(inbox), "--catalog", str(tmp_path / "catalog"), "--model", str(tiny_model),
            "--settle-seconds", "0", "--id-keyword", "OBJID", "--json"]
    for _ in range(2):
        done = run_job(*args)
        assert done.returncode == 3, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        assert summary["id_collisions"] == 2 and summary["rows"] == 0
        assert str(inbox / "q.fits") in summary["id_collision_examples"][0]


@pytest.mark.ray
def test_header_ids_and_fits_images_of_new_files_are_read_by_ray_tasks_not_the_driver(tmp_path, tiny_model,
                                                                                      local_ray, monkeypatch):
    from galaxy_infer import ids, shards
    from galaxy_infer.synthetic import write_fits_cutout

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, name in enumerate(("p.fits", "q.fits")):
        write_fits_cutout(inbox / name, np.random.default_rng(i))
        with fits.open(inbox / name, mode="update") as hdul:
            hdul[0].header["OBJID"] = f"X{i}"

    def not_here(*args, **kwargs):
        raise AssertionError("the driver opened an input")

    for module, name in ((shards, "shard_records"), (ids, "header_value")):
        monkeypatch.setattr(module, name, not_here)
    summary = ingest(IngestConfig(inbox=str(inbox), catalog=str(tmp_path / "catalog"), model=str(tiny_model),
                                  date="2026-11-20", settle_seconds=0, id_keyword="OBJID", progress=False))
    assert summary["rows"] == summary["ok"] == 2
    assert sorted(read_ingest_catalog(tmp_path / "catalog").column("object_id").to_pylist()) == ["X0", "X1"]


@pytest.mark.ray
def test_a_file_sharing_a_held_objects_stem_is_classified_and_the_held_id_stays(tmp_path, tiny_model, local_ray):
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    write_night(inbox, "a", 1, seed=1)
    first = ingest(IngestConfig(inbox=str(inbox), catalog=str(catalog), model=str(tiny_model), date="2026-11-20",
                                settle_seconds=0, progress=False))
    held = set(read_ingest_catalog(catalog).column("object_id").to_pylist())
    write_night(inbox, "b", 1, seed=2)
    for path in (inbox / "b").iterdir():  # the held files' names again, in another folder
        path.rename(inbox / "b" / path.name.replace("nb_", "na_"))
    second = ingest(IngestConfig(inbox=str(inbox), catalog=str(catalog), model=str(tiny_model), date="2026-11-21",
                                 settle_seconds=0, progress=False))
    table = read_ingest_catalog(catalog)
    ids = table.column("object_id").to_pylist()
    assert first["rows"] == 2 and second["rows"] == 2 and second["already_held"] == 2
    assert len(ids) == len(set(ids)) == 4 and held <= set(ids)
    assert {i for i in ids if i not in held} == {f"b/{p.name}" for p in (inbox / "b").iterdir()}
    assert set(table.column("status").to_pylist()) == {"ok"}
