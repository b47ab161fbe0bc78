"""The nightly ledger: which objects an ingest catalog holds, and a local index that keeps a night's
look-up to the catalog files that may matter.

The committed catalog files are the one source of truth (:class:`Ledger`). A night asks them two
questions (:func:`galaxy_infer.ids.assign`): which inbox paths are held, and which of the ids a new
file could take are held. Reading two columns of every file answers both, but grows with the
catalog. The *index* is a DuckDB file in the cache folder (:func:`index_path`) with, for each held
row, the 64-bit DuckDB ``hash`` of its ``source_path`` and of its ``object_id`` and the file it is
in; a night reads only the files with a hash hit and checks their rows exactly, so a hash
collision costs one more file read, never a wrong answer.

The index is derived, never trusted over the files: it records each file it covers by name, size
and modification time, and before each night (:func:`indexed`) drops the files that are gone or
changed and adds those it does not cover yet, a batch of files per transaction (a killed run
leaves it as it was before the batch). One that cannot be opened, or was written by another
layout or DuckDB version (whose ``hash`` may differ), is deleted and rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from galaxy_infer import storage
from galaxy_infer.environment import cache_folder
from galaxy_infer.errors import TRANSIENT_PREFIX

BATCH_ROWS = 65_536
DUCKDB_MEMORY = "512MB"
"""DuckDB's memory limit; past it, group-bys, joins and sorts spill to the scratch folder."""
INDEX_LAYOUT = 1
"""The index's tables; another number (or another DuckDB version) means a rebuild."""
INDEX_BATCH_FILES = 100
"""Catalog files added to the index per transaction."""
INDEX_KEEP_DAYS = 30
"""A ledger index no ingest has used for this long is removed from the cache (see :func:`prune_indexes`)."""

LEDGER_SCHEMA = pa.schema([("object_id", pa.string()), ("source_path", pa.string()), ("model_id", pa.string()),
                           ("error", pa.string())])

Stamp = tuple[str, int, int | None]
"""A committed file as listed: URI, size in bytes, modification time in ns."""


def connect(database: str, spill: str) -> duckdb.DuckDBPyConnection:
    """DuckDB on file ``database`` with bounded memory, spilling to folder ``spill``."""
    con = duckdb.connect(database)
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'; SET temp_directory = {quote(spill)};"
                "SET preserve_insertion_order = false; SET threads = 2; SET enable_progress_bar = false")
    return con


def quote(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Ledger:
    """The nightly ledger: committed catalog files, whose rows for ``model_id`` hold their objects.

    A row whose reason says the bytes could not be read now does not hold its object, so the
    object is tried again. The files are streamed, never loaded: locally by DuckDB's own Parquet
    reader (measured ~8x faster than feeding it a pyarrow scan), in an object store through a
    pyarrow dataset with little read-ahead (DuckDB reads S3 only through its httpfs extension,
    which is not installed). ``index``, where given, is an index file (see the module) covering
    exactly ``files``.
    """

    files: tuple[str, ...]
    model_id: str
    index: str | None = None

    @contextmanager
    def scan(self, con: duckdb.DuckDBPyConnection, name: str) -> Iterator[None]:
        """The held rows' ``object_id`` and ``source_path`` as view ``name`` of ``con``."""
        if not self.files:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS "
                        "SELECT NULL::VARCHAR AS object_id, NULL::VARCHAR AS source_path WHERE false")
            yield
            return
        if not storage.is_remote(self.files[0]):
            files = ", ".join(quote(f) for f in self.files)
            con.execute(f"""CREATE OR REPLACE TEMP VIEW {name} AS SELECT object_id, source_path
                FROM read_parquet([{files}], union_by_name = true)
                WHERE model_id = {quote(self.model_id)}
                  AND (error IS NULL OR NOT starts_with(error, {quote(TRANSIENT_PREFIX)}))""")
            yield
            return
        holds = (pc.field("model_id") == self.model_id) & (
            pc.field("error").is_null() | ~pc.starts_with(pc.field("error"), TRANSIENT_PREFIX))
        filesystem, _ = storage.resolve(self.files[0])
        dataset = ds.dataset([storage.resolve(f)[1] for f in self.files], schema=LEDGER_SCHEMA, format="parquet",
                             filesystem=filesystem)
        scanner = dataset.scanner(columns=["object_id", "source_path"], filter=holds, batch_size=BATCH_ROWS,
                                  batch_readahead=1, fragment_readahead=1)
        con.register(name, scanner.to_reader())
        try:
            yield
        finally:
            con.unregister(name)

    def holding(self, con: duckdb.DuckDBPyConnection, column: str, keys: str) -> Ledger:
        """The files that may hold a row whose ``column`` (``source_path`` or ``object_id``) is a value
        of query ``keys``: those with a hash hit in the index; all of them without a readable index."""
        if self.index is None or not self.files:
            return self
        found = self._from_index(con, f"""SELECT DISTINCT f.uri FROM ledger_index.held h JOIN ledger_index.files f
            USING (file) WHERE h.{column} IN (SELECT hash(k) FROM ({keys}) AS keys(k))""")
        if found is None:
            return Ledger(self.files, self.model_id)
        hits = {uri for uri, in found}
        return Ledger(tuple(f for f in self.files if f in hits), self.model_id)

    def count(self, con: duckdb.DuckDBPyConnection) -> int:
        """How many rows hold objects (the index's count where there is a readable one)."""
        found = self._from_index(con, "SELECT count(*) FROM ledger_index.held") if self.index is not None else None
        if found is not None:
            return found[0][0]
        with self.scan(con, "held_count"):
            return con.execute("SELECT count(*) FROM held_count").fetchall()[0][0]

    def _from_index(self, con: duckdb.DuckDBPyConnection, query: str) -> list[tuple] | None:
        """``query``'s rows, the index attached as ``ledger_index`` (detached after, so its pages leave
        memory); None where the index cannot be read, which is then removed for the next run to rebuild."""
        try:
            con.execute(f"ATTACH {quote(str(self.index))} AS ledger_index (READ_ONLY)")
            try:
                return con.execute(query).fetchall()
            finally:
                con.execute("DETACH ledger_index")
        except duckdb.Error as exc:
            warnings.warn(f"ledger index {self.index} unreadable ({exc}): reading every catalog file", stacklevel=3)
            _remove(str(self.index))
            return None


def index_path(catalog: str, model_id: str) -> str:
    """The index of ``model_id``'s rows in ``catalog`` (an absolute path or a URI): one file per pair."""
    key = hashlib.sha256(f"{catalog}\n{model_id}".encode()).hexdigest()[:32]
    return str(cache_folder("ledger") / f"{key}.duckdb")


def indexed(catalog: str, model_id: str, stamps: list[Stamp]) -> Ledger:
    """The ledger of the committed files ``stamps``, with its index brought up to date.

    An index that opens but fails on the way is rebuilt once. Where it cannot be written (a
    read-only cache folder, a full disk, or a committed file that cannot be read, which then fails
    the run when the files are read) the ledger has no index: every file is read, as correct and
    as slow as without one.
    """
    files = tuple(uri for uri, _, _ in stamps)
    path = index_path(catalog, model_id)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            _update(path, model_id, stamps)
        except duckdb.Error:
            _remove(path)
            _update(path, model_id, stamps)
    except (OSError, duckdb.Error) as exc:
        warnings.warn(f"no ledger index ({exc}): reading every catalog file", stacklevel=2)
        return Ledger(files, model_id)
    prune_indexes(keep=path)
    return Ledger(files, model_id, path)


def prune_indexes(keep: str, days: float = INDEX_KEEP_DAYS) -> None:
    """Mark the index at ``keep`` as used now and remove the others unused for ``days``: their
    catalogs may be gone, and one still ingested into is rebuilt on its next night."""
    os.utime(keep)
    cutoff = time.time() - days * 86400
    with os.scandir(os.path.dirname(keep)) as entries:
        for entry in entries:
            try:
                if entry.name.endswith(".duckdb") and entry.path != keep and entry.stat().st_mtime < cutoff:
                    _remove(entry.path)
            except FileNotFoundError:  # another ingest on this machine pruned it first
                continue


def _update(path: str, model_id: str, stamps: list[Stamp]) -> None:
    con = _open_index(path)
    try:
        _bring_up_to_date(con, model_id, stamps)
    finally:
        con.close()


def _remove(path: str) -> None:
    for stale in (path, path + ".wal"):
        if os.path.exists(stale):
            os.remove(stale)


def _open_index(path: str) -> duckdb.DuckDBPyConnection:
    """The index at ``path``; a new, empty one where it is missing, unreadable or of another layout or DuckDB."""
    spill = path + ".spill"
    try:
        con = connect(path, spill)
    except duckdb.Error:
        con = None
    if con is not None:
        try:
            if con.execute("SELECT layout, duckdb FROM meta").fetchall() == [(INDEX_LAYOUT, duckdb.__version__)]:
                return con
        except duckdb.Error:
            pass
        con.close()
    _remove(path)
    con = connect(path, spill)
    con.execute(f"""BEGIN;
        CREATE TABLE files (file INTEGER, uri VARCHAR, size BIGINT, mtime_ns BIGINT);
        CREATE TABLE held (file INTEGER, source_path UBIGINT, object_id UBIGINT);
        CREATE TABLE meta AS SELECT {INDEX_LAYOUT} AS layout, {quote(duckdb.__version__)} AS duckdb;
        COMMIT""")
    return con


def _bring_up_to_date(con: duckdb.DuckDBPyConnection, model_id: str, stamps: list[Stamp]) -> None:
    """Drop the files not in ``stamps`` as they are now; add the rows of those not covered yet."""
    con.register("listed_files", pa.table({"uri": [s[0] for s in stamps], "size": [s[1] for s in stamps],
                                           "mtime_ns": [s[2] for s in stamps]},
                                          schema=pa.schema([("uri", pa.string()), ("size", pa.int64()),
                                                            ("mtime_ns", pa.int64())])))
    same = "f.uri = l.uri AND f.size = l.size AND f.mtime_ns IS NOT DISTINCT FROM l.mtime_ns"
    con.execute(f"""BEGIN;
        CREATE OR REPLACE TEMP TABLE gone AS SELECT file FROM files f WHERE NOT EXISTS (
            SELECT 1 FROM listed_files l WHERE {same});
        DELETE FROM held WHERE file IN (SELECT file FROM gone);
        DELETE FROM files WHERE file IN (SELECT file FROM gone);
        COMMIT""")
    new = con.execute(f"""SELECT uri, size, mtime_ns FROM listed_files l WHERE NOT EXISTS (
        SELECT 1 FROM files f WHERE {same}) ORDER BY uri""").fetchall()
    con.unregister("listed_files")
    first = con.execute("SELECT coalesce(max(file) + 1, 0) FROM files").fetchall()[0][0]
    for start in range(0, len(new), INDEX_BATCH_FILES):
        con.execute("BEGIN")
        for number, (uri, size, mtime_ns) in enumerate(new[start:start + INDEX_BATCH_FILES], first + start):
            con.execute("INSERT INTO files VALUES (?, ?, ?, ?)", [number, uri, size, mtime_ns])
            with Ledger((uri,), model_id).scan(con, "new_rows"):
                con.execute(f"INSERT INTO held SELECT {number}, hash(source_path), hash(object_id) FROM new_rows")
        con.execute("COMMIT")
