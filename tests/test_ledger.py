"""The ledger's local index: a night reads only the catalog files that may matter, and an index that
is stale, corrupt, killed mid-update or cannot be written gives the same pending set as the files alone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galaxy_infer import ledger, storage
from galaxy_infer.ingest import IngestConfig, committed_files, held_objects, pending_records
from galaxy_infer.ledger import LEDGER_SCHEMA, Ledger
from galaxy_infer.worklist import scratch_folder
from tests.test_object_ids import touch
from tests.test_storage import new_bucket

ROOT = Path(__file__).resolve().parents[1]


def commit(uri: str, held: dict[str, str], model_id: str = "m") -> None:
    """One committed catalog file holding ``held`` (object id -> source path)."""
    table = pa.table({"object_id": list(held), "source_path": list(held.values()), "model_id": [model_id] * len(held),
                      "error": [None] * len(held)}, schema=LEDGER_SCHEMA)
    storage.write_object_atomic(uri, lambda stream: pq.write_table(table, stream))


def night(inbox: str, catalog: str, held: Ledger) -> tuple[dict[str, str], dict]:
    """The pending records of a night (source path -> object id) and its counts."""
    config = IngestConfig(inbox=inbox, catalog=catalog, settle_seconds=0)
    with scratch_folder() as scratch:
        work, counts = pending_records(config, held, scratch)
        table = pq.read_table(work.path)
    return dict(zip(table.column("source_path").to_pylist(), table.column("object_id").to_pylist())), counts


def same_night_as_the_files_alone(inbox: str, catalog: str) -> tuple[dict[str, str], dict]:
    """The night with the index, checked against the night reading every committed file."""
    indexed = held_objects(catalog, "m")
    assert indexed.index is not None
    with_index = night(inbox, catalog, indexed)
    assert with_index == night(inbox, catalog, Ledger(tuple(committed_files(catalog)), "m"))
    return with_index


def covered(catalog: str) -> list[str]:
    with duckdb.connect(ledger.index_path(catalog, "m"), read_only=True) as con:
        return [uri for uri, in con.execute("SELECT uri FROM files ORDER BY uri").fetchall()]


@pytest.fixture
def nights(tmp_path) -> tuple[Path, Path]:
    """An inbox with two held files, one new file, and one new file whose stem a held object has as its id;
    a catalog of three files, one of them another model's."""
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    touch(inbox, "a/J1.jpg", "a/J2.jpg", "b/J3.jpg", "b/H9.jpg")
    commit(str(catalog / "ingest_date=2026-01-01" / "part-1.parquet"),
           {"J1": str(inbox / "a" / "J1.jpg"), "J2": str(inbox / "a" / "J2.jpg")})
    commit(str(catalog / "ingest_date=2026-01-02" / "part-2.parquet"), {"H9": "/elsewhere/H9.jpg", "K": "/k.jpg"})
    commit(str(catalog / "ingest_date=2026-01-02" / "part-3.parquet"), {"J3": str(inbox / "b" / "J3.jpg")}, "other")
    return inbox, catalog


def test_a_night_reads_only_the_files_with_a_hash_hit_and_gets_what_the_files_alone_give(nights):
    inbox, catalog = map(str, nights)
    pending, counts = same_night_as_the_files_alone(inbox, catalog)
    assert {os.path.relpath(p, inbox): i for p, i in pending.items()} == {"b/J3.jpg": "J3", "b/H9.jpg": "b/H9.jpg"}
    assert counts["held_before"] == 4 and counts["already_held"] == 2
    held = held_objects(catalog, "m")
    con = duckdb.connect()
    probe = "SELECT * FROM (VALUES ('{}')) AS t(k)"
    first, second, _ = committed_files(catalog)
    assert held.holding(con, "source_path", probe.format(os.path.join(inbox, "a", "J2.jpg"))).files == (first,)
    assert held.holding(con, "object_id", probe.format("H9")).files == (second,)
    assert held.holding(con, "object_id", probe.format("J3")).files == ()  # another model's row holds nothing


def test_relative_held_paths_are_found_through_the_index(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "inbox/J1.jpg", "inbox/J2.jpg")
    commit(str(tmp_path / "catalog" / "ingest_date=2026-01-01" / "part-1.parquet"), {"J1": "inbox/J1.jpg"})
    pending, _ = same_night_as_the_files_alone("inbox", str(tmp_path / "catalog"))
    assert list(pending.values()) == ["J2"]


def test_a_stale_index_follows_files_removed_changed_and_added(nights):
    inbox, catalog = map(str, nights)
    held_objects(catalog, "m")
    first, second, third = committed_files(catalog)
    os.remove(first)  # J1 and J2 are no longer held
    commit(second, {"H9": "/elsewhere/H9.jpg", "J3": "/elsewhere/J3.jpg"})  # rewritten: J3 is now a taken id
    added = str(nights[1] / "ingest_date=2026-01-03" / "part-4.parquet")
    commit(added, {"X": str(Path(inbox) / "a" / "J1.jpg")})
    pending, counts = same_night_as_the_files_alone(inbox, catalog)
    assert {os.path.relpath(p, inbox): i for p, i in pending.items()} == {
        "a/J2.jpg": "J2", "b/J3.jpg": "b/J3.jpg", "b/H9.jpg": "b/H9.jpg"}
    assert counts["held_before"] == 3 and covered(catalog) == sorted([second, third, added])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another duckdb", "a table gone"])
def test_a_corrupt_or_foreign_index_is_rebuilt(nights, damage):
    inbox, catalog = map(str, nights)
    expected = same_night_as_the_files_alone(inbox, catalog)
    path = ledger.index_path(catalog, "m")
    if damage == "garbage":
        Path(path).write_bytes(os.urandom(300_000))
    elif damage == "truncated":
        os.truncate(path, os.path.getsize(path) // 3)
    else:
        with duckdb.connect(path) as con:
            con.execute("UPDATE meta SET duckdb = '0.0.1'; DELETE FROM held" if damage == "another duckdb"
                        else "ALTER TABLE held RENAME TO gone")
    assert same_night_as_the_files_alone(inbox, catalog) == expected
    assert covered(catalog) == committed_files(catalog)


def test_an_index_found_unreadable_during_a_night_is_not_used_and_is_removed(nights, tmp_path):
    inbox, catalog = map(str, nights)
    expected = night(inbox, catalog, Ledger(tuple(committed_files(catalog)), "m"))
    damaged = tmp_path / "damaged.duckdb"
    damaged.write_bytes(os.urandom(300_000))
    with pytest.warns(UserWarning, match="unreadable"):
        assert night(inbox, catalog, Ledger(tuple(committed_files(catalog)), "m", str(damaged))) == expected
    assert not damaged.exists()


def test_an_index_update_killed_mid_batch_keeps_only_whole_batches(nights):
    inbox, catalog = map(str, nights)
    kill = f"""
import os, signal
from galaxy_infer import ingest, ledger
ledger.INDEX_BATCH_FILES = 1
scan = ledger.Ledger.scan
def dying(self, con, name):
    if ledger.Ledger.files_seen == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    ledger.Ledger.files_seen += 1
    return scan(self, con, name)
ledger.Ledger.files_seen = 0
ledger.Ledger.scan = dying
ingest.held_objects({catalog!r}, "m")
"""
    proc = subprocess.run([sys.executable, "-c", kill], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert covered(catalog) == committed_files(catalog)[:2]
    same_night_as_the_files_alone(inbox, catalog)
    assert covered(catalog) == committed_files(catalog)


def test_without_a_writable_cache_every_file_is_read(nights, tmp_path, monkeypatch):
    inbox, catalog = map(str, nights)
    (tmp_path / "not-a-folder").write_bytes(b"")
    monkeypatch.setenv("GALAXY_INFER_CACHE", str(tmp_path / "not-a-folder"))
    with pytest.warns(UserWarning, match="no ledger index"):
        held = held_objects(catalog, "m")
    assert held.index is None and held.files == tuple(committed_files(catalog))
    assert len(night(inbox, catalog, held)[0]) == 2


def test_the_index_of_an_object_store_catalog(s3, tmp_path):
    bucket = new_bucket(s3)
    inbox, catalog = tmp_path / "inbox", f"s3://{bucket}/catalog"
    touch(inbox, "J1.jpg", "J2.jpg")
    commit(f"{catalog}/ingest_date=2026-01-01/part-1.parquet", {"J1": str(inbox / "J1.jpg")})
    commit(f"{catalog}/ingest_date=2026-01-02/part-2.parquet", {"J2": "/elsewhere/J2.jpg"})
    pending, counts = same_night_as_the_files_alone(str(inbox), catalog)
    assert pending == {str(inbox / "J2.jpg"): "J2.jpg"} and counts["already_held"] == 1
    assert covered(catalog) == committed_files(catalog)


def test_indexes_unused_for_a_month_are_removed_from_the_cache(nights):
    """The cache does not keep the indexes of catalogs that are gone (or no longer ingested into)."""
    inbox, catalog = nights
    folder = Path(ledger.index_path(str(catalog), "m")).parent
    folder.mkdir(parents=True, exist_ok=True)
    old, recent = folder / "gone-catalog.duckdb", folder / "last-week.duckdb"
    for path, days in ((old, 31), (recent, 7)):
        path.write_bytes(b"")
        Path(f"{path}.wal").write_bytes(b"")
        os.utime(path, (time.time() - days * 86400,) * 2)
    same_night_as_the_files_alone(str(inbox), str(catalog))
    assert not old.exists() and not Path(f"{old}.wal").exists()
    assert recent.exists() and Path(ledger.index_path(str(catalog), "m")).exists()
