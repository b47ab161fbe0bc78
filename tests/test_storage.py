"""Storage against a real S3-compatible server (SeaweedFS on 127.0.0.1) and local folders: listing,
globs, manifests, reads and their errors, fail-fast checks, catalog commits, locks and leases."""
from __future__ import annotations

import gzip
import io
import json
import os
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from PIL import Image

from benchmarks.object_store import DelayedOpens
from galaxy_infer import storage
from galaxy_infer.catalog import SUMMARY_NAME, CatalogWriter, catalog_table, read_catalog
from galaxy_infer.cli import main as cli_main
from galaxy_infer.errors import InputError, StorageError, TransientInputError
from galaxy_infer.pipeline import read_and_preprocess
from galaxy_infer.preprocess import Recipe
from galaxy_infer.readers import read_cutout
from galaxy_infer.worklist import discover
from galaxy_infer.synthetic import galaxy_image, write_fits_cutout
from tests import s3_server


def jpeg(size: int = 96, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(galaxy_image(np.random.default_rng(seed), "spiral", size)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def admin_fs(server) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(access_key=s3_server.ACCESS_KEY, secret_key=s3_server.SECRET_KEY,
                             endpoint_override=server.endpoint, scheme="http", allow_bucket_creation=True,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=8))  # a loaded server errs


def new_bucket(server) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    admin_fs(server).create_dir(name)
    return name


def put(server, key: str, data: bytes) -> None:
    with admin_fs(server).open_output_stream(key, compression=None) as f:  # as given: .gz names are not gzipped again
        f.write(data)


def test_prefix_glob_single_object_and_manifests_on_s3(s3, tmp_path):
    bucket = new_bucket(s3)
    fits_path = write_fits_cutout(tmp_path / "c.fits", np.random.default_rng(1), size=32)
    for key in ["night-1/a/g1.fits", "night-1/g2.fits", "night-2/b/c/g3.fits", "day-1/g4.fits"]:
        put(s3, f"{bucket}/{key}", fits_path.read_bytes())
    put(s3, f"{bucket}/night-1/.hidden.fits", fits_path.read_bytes())
    put(s3, f"{bucket}/night-1/notes.txt", b"x")

    assert [r["object_id"] for r in discover([f"s3://{bucket}/night-*/**/*.fits"])] == ["g1", "g2", "g3"]
    assert [r["source_path"] for r in discover([f"s3://{bucket}/night-1/"])] == [
        f"s3://{bucket}/night-1/a/g1.fits", f"s3://{bucket}/night-1/g2.fits"]
    assert [r["object_id"] for r in discover([f"s3://{bucket}/day-1/g4.fits"])] == ["g4"]

    manifest = pd.DataFrame({"path": ["night-1/g2.fits", f"s3://{bucket}/day-1/g4.fits", "missing.fits"],
                             "object_id": ["A", "B", "C"]})
    put(s3, f"{bucket}/m.csv", manifest.to_csv(index=False).encode())
    buf = io.BytesIO()
    manifest.to_parquet(buf)
    put(s3, f"{bucket}/lists/m.parquet", buf.getvalue())
    from_csv = discover([f"s3://{bucket}/m.csv"])
    assert [r["source_path"] for r in from_csv] == [
        f"s3://{bucket}/night-1/g2.fits", f"s3://{bucket}/day-1/g4.fits", f"s3://{bucket}/missing.fits"]
    assert [r["source_path"] for r in discover([f"s3://{bucket}/lists/m.parquet"])][0] == \
        f"s3://{bucket}/lists/night-1/g2.fits"
    decoded = read_cutout(from_csv[0]["source_path"], Recipe())
    assert decoded.pixels.shape == (3, 32, 32) and decoded.ra is not None


def test_reads_from_memory_fits_gz_fz_and_errors_are_reasons(s3, tmp_path):
    from astropy.io import fits

    bucket = new_bucket(s3)
    raw = write_fits_cutout(tmp_path / "c.fits", np.random.default_rng(2), size=32).read_bytes()
    fz = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.ones((16, 16), np.float32))]).writeto(fz)
    put(s3, f"{bucket}/a.fits.gz", gzip.compress(raw))
    put(s3, f"{bucket}/b.fits.fz", fz.getvalue())
    put(s3, f"{bucket}/t.jpg", jpeg()[:2000])
    assert read_cutout(f"s3://{bucket}/a.fits.gz", Recipe()).pixels.shape == (3, 32, 32)
    assert read_cutout(f"s3://{bucket}/b.fits.fz", Recipe()).pixels.shape == (1, 16, 16)
    with pytest.raises(InputError, match="truncated JPEG"):
        read_cutout(f"s3://{bucket}/t.jpg", Recipe())
    put(s3, f"{bucket}/t.fits.gz", gzip.compress(raw)[:3000])  # bad bytes, not a failed read: never "cannot read now"
    with pytest.raises(InputError, match="^corrupt or truncated FITS") as truncated:
        read_cutout(f"s3://{bucket}/t.fits.gz", Recipe())
    assert not isinstance(truncated.value, TransientInputError)
    with pytest.raises(InputError, match="^file not found$"):
        read_cutout(f"s3://{bucket}/nope.jpg", Recipe())
    os.environ.update(AWS_ACCESS_KEY_ID=s3_server.LIST_ONLY_KEY, AWS_SECRET_ACCESS_KEY=s3_server.LIST_ONLY_SECRET)
    with pytest.raises(TransientInputError, match=r"^cannot read now: access denied by the store \(HTTP 403\); check"):
        read_cutout(f"s3://{bucket}/a.fits.gz", Recipe())


def test_wrong_endpoint_and_missing_credentials_fail_before_work_with_one_line(s3, tmp_path, capsys, monkeypatch):
    bucket = new_bucket(s3)
    put(s3, f"{bucket}/in/g.jpg", jpeg())
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match=f"cannot access s3://{bucket}/in/: .*ACCESS_DENIED"):
        discover([f"s3://{bucket}/in/"])
    assert cli_main(["classify", f"s3://{bucket}/in/", "--out", str(tmp_path / "cat")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot access" in err and s3_server.SECRET_KEY not in err

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    started = time.monotonic()
    assert cli_main(["classify", f"s3://{bucket}/in/", "--out", str(tmp_path / "cat")]) == 1
    err = capsys.readouterr().err
    assert "cannot access" in err and "connect" in err.lower() and err.count("\n") == 1
    assert time.monotonic() - started < 30
    assert not (tmp_path / "cat").exists()


def test_a_chunk_of_1024_cutouts_at_50_ms_per_open_is_read_and_preprocessed_in_under_5_s(tmp_path):
    data = jpeg(96)
    paths = []
    for i in range(1024):
        path = tmp_path / f"g{i:04d}.jpg"
        path.write_bytes(data)
        paths.append(str(path))
    slow = pafs.PyFileSystem(DelayedOpens(pafs.LocalFileSystem(), 0.05))
    batch = {"object_id": np.array([f"g{i}" for i in range(1024)], dtype=object),
             "source_path": np.array(paths, dtype=object), "ra": np.full(1024, np.nan), "dec": np.full(1024, np.nan)}
    started = time.perf_counter()
    out = read_and_preprocess(batch, Recipe(), filesystem=slow)
    seconds = time.perf_counter() - started
    assert not any(out["error"]) and out["pixels"].shape[0] == 1024
    assert seconds < 5, f"{seconds:.1f} s (one after another would be over 51 s)"


def test_after_one_read_finds_the_store_unreachable_the_tasks_other_reads_fail_at_once():
    from tests.ray_procs import free_ports

    dead = pafs.S3FileSystem(access_key="k", secret_key="s", endpoint_override=f"http://127.0.0.1:{free_ports(1)[0]}",
                             scheme="http", retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    slow_dead = pafs.PyFileSystem(DelayedOpens(dead, 0.2))  # each read costs 0.2 s, as the SDK's retries would
    started = time.perf_counter()
    results = list(storage.read_many([f"bucket/g{i}.jpg" for i in range(60)], slow_dead, concurrency=4))
    seconds = time.perf_counter() - started
    assert {str(r) for r in results} == {"cannot read now: " + storage.UNREACHABLE}
    assert all(isinstance(r, TransientInputError) for r in results)
    assert seconds < 2, f"{seconds:.1f} s: every read waited (60 x 0.2 s / 4 = 3 s)"


def rows(n: int, run_id: str = "r1") -> pa.Table:
    ids = {"object_id": [f"o{i}" for i in range(n)], "source_path": [f"s3://b/o{i}.jpg" for i in range(n)],
           "ra": [None] * n, "dec": [None] * n}
    return catalog_table(ids, ["bad"] * n, None, "m", run_id)


def test_catalog_on_s3_reads_back_with_pandas_pyarrow_and_duckdb(s3):
    bucket = new_bucket(s3)
    out = f"s3://{bucket}/catalogs/run-1"
    with CatalogWriter(out, {"k": "v"}, "r1", rows_per_file=3) as writer:
        writer.write(rows(7))
        assert not storage.exists(out)
        writer.commit({"run_id": "r1", "rows": 7})
    names = sorted(u.rsplit("/", 1)[1] for u in storage.list_uris(f"s3://{bucket}/catalogs"))
    assert names == [SUMMARY_NAME, "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert read_catalog(out).num_rows == 7
    assert len(pd.read_parquet(f"{bucket}/catalogs/run-1", filesystem=storage.resolve(out)[0])) == 7
    assert ds.dataset(f"{bucket}/catalogs/run-1", filesystem=pafs.S3FileSystem(
        endpoint_override=s3.endpoint, scheme="http")).count_rows() == 7
    con = duckdb.connect()
    try:
        con.execute("LOAD httpfs")
    except duckdb.Error:
        pytest.skip("DuckDB's httpfs extension is not installed (it would be downloaded)")
    host = s3.endpoint.removeprefix("http://")
    con.execute(f"SET s3_endpoint='{host}'; SET s3_use_ssl=false; SET s3_url_style='path'; "
                f"SET s3_access_key_id='{s3_server.ACCESS_KEY}'; SET s3_secret_access_key='{s3_server.SECRET_KEY}'")
    assert con.execute(f"SELECT count(*) FROM read_parquet('{out}/*.parquet')").fetchone()[0] == 7


def test_s3_catalog_overwrite_rules_and_a_killed_publish_cleaned_by_the_next_run(s3):
    bucket = new_bucket(s3)
    out = f"s3://{bucket}/cat"
    with CatalogWriter(out, {}, "r1") as writer:
        writer.write(rows(2))
        writer.commit({"run_id": "r1"})
    with pytest.raises(FileExistsError, match="already exists"):
        CatalogWriter(out, {}, "r2")
    put(s3, f"{bucket}/cutouts/g.jpg", jpeg())
    with pytest.raises(FileExistsError, match="not a galaxy-infer catalog"):
        CatalogWriter(f"s3://{bucket}/cutouts", {}, "r2", overwrite=True)
    assert storage.exists(f"s3://{bucket}/cutouts/g.jpg")

    # A run with --overwrite killed mid-publish: its stage is complete and marked; the old summary and
    # one old part are gone from the output, one new part is copied (old and new rows mixed, no summary).
    killed = CatalogWriter(out, {}, "r2", rows_per_file=1, overwrite=True)
    killed.write(rows(3, "r2"))
    killed._close_file()
    storage.write_bytes(f"{killed.stage}/{SUMMARY_NAME}", b'{"run_id": "r2"}')
    storage.write_bytes(f"{killed.stage}/{storage.PUBLISHING_MARKER}", b"")
    storage.delete_file(f"{out}/{SUMMARY_NAME}")
    storage.delete_file(f"{out}/part-00000.parquet")
    admin_fs(s3).copy_file(f"{bucket}/.cat.tmp-r2/part-00000.parquet", f"{bucket}/cat/part-00000.parquet")
    killed.lock.__exit__(None, None, None)  # a SIGKILLed run's lease expires; here it is released
    # The next run on that output finishes the publish: the killed run's catalog is complete, nothing is lost.
    with pytest.raises(FileExistsError, match="already exists"):
        CatalogWriter(out, {}, "r3")
    assert json.loads(storage.read_bytes(f"{out}/{SUMMARY_NAME}"))["run_id"] == "r2"
    assert read_catalog(out).column("run_id").to_pylist() == ["r2"] * 3
    with CatalogWriter(out, {}, "r3", overwrite=True) as writer:
        assert writer.stale_removed == []
        writer.write(rows(3, "r3"))
        writer.commit({"run_id": "r3"})
    assert read_catalog(out).column("run_id").to_pylist() == ["r3"] * 3
    assert sorted(u.rsplit("/", 1)[1] for u in storage.list_uris(f"s3://{bucket}/")) == [
        SUMMARY_NAME, "g.jpg", "part-00000.parquet"]


def test_s3_lease_keeps_a_second_run_out_until_released_or_expired(s3):
    bucket = new_bucket(s3)
    lock = f"s3://{bucket}/cat/.ingest.lock"
    with storage.OutputLock(lock, holder="ingest"):
        with pytest.raises(storage.Locked, match="another ingest holds a lease"):
            storage.OutputLock(lock, holder="ingest").__enter__()
    with storage.OutputLock(lock):
        pass
    put(s3, f"{bucket}/cat/.ingest.lock/0-dead.json", b"{}")  # a killed holder's lease
    with pytest.raises(storage.Locked):
        storage.OutputLock(lock, lease_seconds=60).__enter__()
    time.sleep(2.5)
    with storage.OutputLock(lock, lease_seconds=2):
        assert [u.rsplit("/", 1)[1] for u in storage.list_uris(lock)] != ["0-dead.json"]
    assert storage.list_uris(lock) == []


def killed_holder(lock: str) -> None:
    """A real run that takes the lock on ``lock`` and is then SIGKILLed (no release, no last renewal)."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time; from galaxy_infer import storage; storage.OutputLock(sys.argv[1]).__enter__(); "
            "print('held', flush=True); time.sleep(120)")
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", code, lock], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": root})
    assert proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_rerun_on_the_same_host_takes_over_the_lock_of_a_killed_run(where, s3, tmp_path):
    lock = f"s3://{new_bucket(s3)}/cat/.ingest.lock" if where == "s3" else str(tmp_path / "cat" / ".ingest.lock")
    killed_holder(lock)
    started = time.monotonic()
    with storage.OutputLock(lock, holder="ingest"):
        with pytest.raises(storage.Locked, match="another ingest holds"):  # a live holder is still respected
            storage.OutputLock(lock, holder="ingest").__enter__()
    assert time.monotonic() - started < 10  # not the 120 s of the lease


def test_s3_lease_of_another_host_is_waited_out_even_when_its_pid_is_free_here(s3):
    bucket = new_bucket(s3)
    lock = f"s3://{bucket}/cat/.ingest.lock"
    body = {"host": "elsewhere", "pid": 2 ** 22 + 1, "pid_started": "1", "pid_namespace": storage._pid_namespace(),
            "lease_seconds": 120}
    put(s3, f"{bucket}/cat/.ingest.lock/0-other.json", json.dumps(body).encode())
    with pytest.raises(storage.Locked, match="another ingest holds a lease"):
        storage.OutputLock(lock, holder="ingest").__enter__()


def test_local_overwrite_refuses_a_folder_that_is_not_a_catalog(tmp_path):
    cutouts = tmp_path / "cutouts"
    cutouts.mkdir()
    (cutouts / "g.jpg").write_bytes(jpeg())
    with pytest.raises(FileExistsError, match="not a galaxy-infer catalog.*g.jpg"):
        CatalogWriter(cutouts, {}, "r1", overwrite=True)
    assert (cutouts / "g.jpg").exists() and not list(tmp_path.glob(".cutouts.tmp-*"))
    catalog = tmp_path / "cat"
    with CatalogWriter(catalog, {}, "r1") as writer:
        writer.write(rows(2))
        writer.commit({"run_id": "r1"})
    (catalog / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        CatalogWriter(catalog, {}, "r2", overwrite=True)
    (catalog / "notes.txt").unlink()
    with CatalogWriter(catalog, {}, "r2", overwrite=True) as writer:
        writer.write(rows(1, "r2"))
        writer.commit({"run_id": "r2"})
    assert read_catalog(catalog).column("run_id").to_pylist() == ["r2"]


def test_local_concurrent_runs_on_one_output_one_wins_and_killed_stages_are_cleaned(tmp_path):
    out = tmp_path / "cat"
    stale = tmp_path / ".cat.tmp-killed"
    stale.mkdir()
    (stale / "part-00000.parquet").write_bytes(b"PAR1 torn")
    first = CatalogWriter(out, {}, "r1")
    assert first.stale_removed == [str(stale)] and not stale.exists()
    with pytest.raises(storage.Locked, match="another run holds"):
        CatalogWriter(out, {}, "r2")
    first.write(rows(2))
    first.commit({"run_id": "r1"})
    assert read_catalog(out).num_rows == 2 and json.loads((out / SUMMARY_NAME).read_text())["run_id"] == "r1"
    with pytest.raises(FileExistsError, match="already exists"):
        CatalogWriter(out, {}, "r2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cat.lock", "cat"]


def test_local_replace_killed_between_its_renames_puts_the_old_catalog_back(tmp_path):
    out = tmp_path / "cat"
    with CatalogWriter(out, {}, "r1") as writer:
        writer.write(rows(2))
        writer.commit({"run_id": "r1"})
    out.rename(tmp_path / ".cat.old-dead")  # the first rename of a replace; the kill came before the second
    with pytest.raises(FileExistsError, match="already exists"):
        CatalogWriter(out, {}, "r2")
    assert read_catalog(out).num_rows == 2 and not (tmp_path / ".cat.old-dead").exists()


def test_a_model_on_object_storage_is_fetched_once_into_the_cache(s3, tmp_path, tiny_model, monkeypatch):
    from galaxy_infer.errors import ModelError
    from galaxy_infer.model import load_model_info, resolve_model

    monkeypatch.setenv("GALAXY_INFER_CACHE", str(tmp_path / "cache"))
    bucket = new_bucket(s3)
    put(s3, f"{bucket}/models/tiny.onnx", tiny_model.read_bytes())
    local = resolve_model(f"s3://{bucket}/models/tiny.onnx")
    assert local.startswith(str(tmp_path / "cache")) and load_model_info(local).sha256 == load_model_info(tiny_model).sha256
    assert resolve_model(f"s3://{bucket}/models/tiny.onnx") == local
    with pytest.raises(ModelError, match="cannot read the model"):
        resolve_model(f"s3://{bucket}/models/missing.onnx")


def test_a_catalog_named_without_a_folder_is_published_and_replaced_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for run, replace in (("1", False), ("2", True)):
        stage = tmp_path / f".cat.tmp-{run}"
        stage.mkdir()
        (stage / SUMMARY_NAME).write_text(run)
        storage.publish_folder(str(stage.name), "cat", SUMMARY_NAME, replace=replace)
        assert (tmp_path / "cat" / SUMMARY_NAME).read_text() == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]
