"""Discovery: inputs (folders, prefixes, globs, manifests, shards) streamed into a Parquet work list.

Nothing here holds the whole listing: folders and prefixes are listed a directory at a time,
manifests read a record batch at a time, and units go to a folder of Parquet files on local
scratch, one file per batch of up to :data:`BATCH_ROWS`, each renamed into place whole. The
listing only names files; what a file holds (a shard's cutouts, a FITS file's images, its header
id) is read by an :data:`Opener`, in a run a Ray task on the workers (:func:`open_files`). A
:class:`Listing` runs discovery in a thread and hands out records while it is still listing, each
with its *provisional* id (given, else the file's stem), so the first tasks start at once whatever
the input's size. :mod:`galaxy_infer.ids` then gives every unit its final id out of core; the few
that differ from the provisional one are amended before the catalog is committed. For small
inputs and the nightly ingest, :func:`plan` lists and assigns first, and :class:`WorkList` hands
out the final records a chunk at a time.

Files named by a manifest are kept even when missing, so they become ``file not found`` rows; an
input argument that does not exist raises FileNotFoundError. Hidden files (leading ``.``) are
skipped when listing. ``fields`` names the image/id/ra/dec fields of shards whose layout is
ambiguous.
"""
from __future__ import annotations

import collections
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, fields as dataclass_fields, replace
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from galaxy_infer import ids, shards, storage
from galaxy_infer.errors import ErrorKind
from galaxy_infer.readers import FITS_SUFFIXES, is_cutout

BATCH_ROWS = 65_536
"""Units buffered before they are written to the work list (bounds discovery's memory)."""
CSV_BLOCK_BYTES = 1 << 18
"""A CSV manifest's read size. Arrow's CSV reader reads some 30 blocks ahead: measured 102-127 MB
held with 4 MB blocks, 9-10 MB with these."""
OPEN_FILES = 1024
"""Files to open (shards, FITS files) sent to one opening task: enough that a folder of single FITS
cutouts costs the driver little per file (a Ray task costs it ~3 ms), few enough to spread."""
OPENS_IN_FLIGHT = 8
"""Opening tasks a listing keeps running ahead of the work list it writes."""

RECORD_SCHEMA = pa.schema([
    ("object_id", pa.string()), ("source_path", pa.string()), ("ra", pa.float64()), ("dec", pa.float64()),
    ("shard", pa.string()), ("shard_layout", pa.string()), ("shard_pos", pa.int64()), ("error", pa.string()),
    ("error_kind", pa.string())])
"""One input cutout as the pipeline takes it. ``shard*`` locate a cutout inside a shard (see
:mod:`galaxy_infer.shards`); ``error`` and its ``error_kind`` are set when discovery already knows
the cutout becomes an error row (an unopenable shard, an object id collision, a file name that is
not UTF-8)."""

NOT_UTF8 = "file name is not valid UTF-8: rename the file (the path shows the bad bytes as \\xNN)"


@dataclass(frozen=True, slots=True)
class Unit:
    """One input found by discovery, before the id rule (see :data:`galaxy_infer.ids.WORK_SCHEMA`)."""

    source_path: str
    relative_path: str
    given_id: str | None = None
    stem: str | None = None
    ra: float | None = None
    dec: float | None = None
    shard: str | None = None
    shard_layout: str | None = None
    shard_pos: int | None = None
    error: str | None = None
    error_kind: str | None = None
    mtime: float | None = None
    in_folder: bool = False
    """Found by listing a folder, prefix or glob (where a Parquet file without images is not an input)."""


_UNIT_FIELDS = [f.name for f in dataclass_fields(Unit)]
assert _UNIT_FIELDS[-1] == "in_folder"  # the only field that is not a work list column


def must_open(source_path: str, given_id: str | None, error: str | None, shard: str | None,
              id_keyword: str | None = None) -> bool:
    """Whether only the file's content says what it holds: a shard's cutouts, a FITS file's images
    (several make it a shard), a FITS header's id (``--id-keyword``, where no id was given)."""
    if error or shard:
        return False
    name = source_path.lower()
    return name.endswith(shards.SHARD_SUFFIXES + shards.MEF_SUFFIXES) or bool(
        id_keyword and given_id is None and name.endswith(FITS_SUFFIXES))


def open_files(listed: pa.Table, in_folder: list[bool], fields: shards.ShardFields | None,
               id_keyword: str | None) -> pa.Table:
    """Work list rows (``seq`` null) with each file that :func:`must_open` replaced by what it holds;
    ``in_folder`` is each row's :attr:`Unit.in_folder`.

    In a run this is a Ray task (see :data:`Opener`), so shards and FITS headers are read on the
    workers, never by the driver; the rows travel as Arrow tables both ways, and only the opened
    ones become Python objects.
    """
    columns = [listed.column(name).to_pylist() for name in ("source_path", "given_id", "error", "shard")]
    opened = [i for i, row in enumerate(zip(*columns)) if must_open(*row, id_keyword)]
    if not opened:
        return listed
    rows = listed.take(pa.array(opened, pa.int64())).to_pylist()
    to_open = [Unit(**{name: row[name] for name in _UNIT_FIELDS[:-1]}, in_folder=in_folder[i])
               for i, row in zip(opened, rows)]
    found_each = storage.map_reads(lambda unit: _open_unit(unit, fields, id_keyword), to_open,
                                   to_open[0].source_path)
    units: list[Unit] = []
    norms: list[str] = []
    counts = np.ones(listed.num_rows, np.int64)
    for i, row, unit, found in zip(opened, rows, to_open, found_each):
        units += found
        norms += [row["norm_path"] + f.source_path[len(unit.source_path):] for f in found]  # a shard: path + label
        counts[i] = len(found)
    # every row in place: itself, or its file's units (appended after the listed rows)
    is_opened = np.zeros(listed.num_rows, bool)
    is_opened[opened] = True
    row_of = np.repeat(np.arange(listed.num_rows), counts)
    within = np.arange(len(row_of)) - np.repeat(np.cumsum(counts) - counts, counts)
    first_found = np.zeros(listed.num_rows, np.int64)
    first_found[opened] = np.cumsum(counts[opened]) - counts[opened]
    order = np.where(is_opened[row_of], listed.num_rows + first_found[row_of] + within, row_of)
    return pa.concat_tables([listed, _units_table(units, norms)]).take(pa.array(order))


def _open_unit(unit: Unit, fields: shards.ShardFields | None, id_keyword: str | None) -> list[Unit]:
    """A shard's cutouts (none for a folder's Parquet file without images), else the file itself with
    its header id."""
    path = unit.source_path
    if unit.in_folder and path.lower().endswith(".parquet") and not shards.is_parquet_shard(path):
        return []
    found = shards.shard_records(path, fields)
    if found:
        return [_shard_unit(r, unit.relative_path, unit.mtime) for r in found]
    if id_keyword and unit.given_id is None and path.lower().endswith(FITS_SUFFIXES):
        return [replace(unit, given_id=ids.header_value(path, id_keyword))]
    return [unit]


class Pending(Protocol):
    """A batch being opened: :class:`concurrent.futures.Future`'s ``done`` and ``result``."""

    def done(self) -> bool: ...

    def result(self) -> pa.Table: ...


Opener = Callable[[pa.Table, list[bool], "shards.ShardFields | None", "str | None"], Pending]
"""Runs :func:`open_files` somewhere: :func:`open_here`, or on Ray's workers in a run."""


def open_here(listed: pa.Table, in_folder: list[bool], fields: shards.ShardFields | None,
              id_keyword: str | None) -> Pending:
    """:func:`open_files` in this process, at once (tools, tests, the nightly ingest's listing)."""
    return _ready(open_files(listed, in_folder, fields, id_keyword))


class WorkListWriter:
    """Appends units (or whole Arrow batches of them) to a work list folder, numbering them in order.

    Batches holding files to open go to ``opener`` (:data:`Opener`), up to :data:`OPENS_IN_FLIGHT`
    at a time; what they find is written in listing order, so ``seq`` does not depend on which
    task ends first. Each file holds up to :data:`BATCH_ROWS` units (the first lands as soon as it
    is known, so work can start) and is named by its first unit's number (``000000065536.parquet``),
    written under a temporary name and renamed, so a reader following the folder never sees part
    of one. ``on_file(path, rows)`` is called after each file lands.
    """

    def __init__(self, folder: str, on_file: Callable[[str, int], None] | None = None,
                 opener: Opener = open_here, fields: shards.ShardFields | None = None,
                 id_keyword: str | None = None) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.on_file = on_file
        self.opener, self.fields, self.id_keyword = opener, fields, id_keyword
        self.rows = 0
        self.pending: list[Unit] = []
        self.to_open = 0
        self.queue: collections.deque[Pending] = collections.deque()
        self.found: list[pa.Table] = []
        self.found_rows = 0

    def add(self, unit: Unit) -> None:
        self.pending.append(unit)
        self.to_open += must_open(unit.source_path, unit.given_id, unit.error, unit.shard, self.id_keyword)
        if len(self.pending) >= BATCH_ROWS or self.to_open >= OPEN_FILES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            units, self.pending = self.pending, []
            table = _units_table(units, [ids.normalised_path(u.source_path) for u in units])
            self._queue(self.opener(table, [u.in_folder for u in units], self.fields, self.id_keyword)
                        if self.to_open else _ready(table))
            self.to_open = 0

    def add_columns(self, columns: dict) -> None:
        """Units as columns (lists or Arrow arrays) named as :data:`~galaxy_infer.ids.WORK_SCHEMA`'s, ``seq`` aside."""
        self.flush()
        self._queue(_ready(_work_table(columns)))

    def _queue(self, batch: Pending) -> None:
        self.queue.append(batch)
        while self.queue and (self.queue[0].done() or len(self.queue) > OPENS_IN_FLIGHT):
            self._found(self.queue.popleft().result())

    def _found(self, table: pa.Table) -> None:
        self.found.append(table)
        self.found_rows += table.num_rows
        if self.found_rows >= BATCH_ROWS or self.rows == 0:
            self._write()

    def _write(self, empty: bool = False) -> None:
        table = pa.concat_tables(self.found)
        self.found, self.found_rows = [], 0
        for start in range(0, max(table.num_rows, empty), BATCH_ROWS):
            piece = table.slice(start, BATCH_ROWS)
            piece = piece.set_column(0, "seq", pa.arange(self.rows, self.rows + piece.num_rows))
            path = os.path.join(self.folder, f"{self.rows:012d}.parquet")
            # no dictionary: it cost 40% of listing a manifest (10^6 rows: 0.71 -> 0.43 s CPU) and paths rarely repeat
            pq.write_table(piece, path + ".tmp", use_dictionary=False)
            os.rename(path + ".tmp", path)
            self.rows += piece.num_rows
            if self.on_file is not None:
                self.on_file(path, piece.num_rows)

    def close(self) -> None:
        self.flush()
        while self.queue:
            self._found(self.queue.popleft().result())
        if self.found or self.rows == 0:  # an empty listing is still a work list DuckDB can read
            self.found.append(_work_table({"source_path": pa.array([], pa.string())}))
            self._write(empty=self.rows == 0)


def _ready(table: pa.Table) -> Pending:
    done: Future = Future()
    done.set_result(table)
    return done


def _units_table(units: list[Unit], norms: list[str]) -> pa.Table:
    return _work_table({**{name: [getattr(u, name) for u in units] for name in _UNIT_FIELDS}, "norm_path": norms})


def _work_table(columns: dict) -> pa.Table:
    """Columns as work list rows (:data:`~galaxy_infer.ids.WORK_SCHEMA`, ``seq`` null), with the stems
    of the units that have no given id (the stem is the id's fallback)."""
    n = len(columns["source_path"])
    table = pa.table({f.name: _column(columns.get(f.name), f.type, n) for f in ids.WORK_SCHEMA},
                     schema=ids.WORK_SCHEMA)
    unnamed = pc.and_(table.column("stem").is_null(), table.column("given_id").is_null())
    if pc.any(unnamed).as_py():
        stems = pc.replace_with_mask(table.column("stem").combine_chunks(), unnamed.combine_chunks(),
                                     ids.stems(table.column("source_path").filter(unnamed)).combine_chunks())
        table = table.set_column(table.schema.get_field_index("stem"), "stem", stems)
    return table


def _column(values: list | pa.Array | pa.ChunkedArray | None, type_: pa.DataType, n: int) -> pa.Array | pa.ChunkedArray:
    if values is None:
        return pa.nulls(n, type_)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type_)


def write_worklist(inputs: list[str], folder: str, fields: shards.ShardFields | None = None,
                   with_mtime: bool = False, on_file: Callable[[str, int], None] | None = None,
                   id_keyword: str | None = None, opener: Opener = open_here) -> int:
    """Discover ``inputs`` into the work list folder ``folder``; returns how many units it holds.

    ``with_mtime`` records each listed file's modification time (the nightly ingest's settle check);
    ``id_keyword`` reads each FITS file's id from its header (rule 2 of :mod:`galaxy_infer.ids`)
    where ``opener`` opens the file.
    """
    writer = WorkListWriter(folder, on_file, opener, fields, id_keyword)
    try:
        for item in inputs:
            _discover_one(item, writer, with_mtime)
    finally:
        writer.close()
    return writer.rows


def worklist_files(folder: str) -> str:
    """The work list folder as DuckDB reads it (every landed batch file)."""
    return os.path.join(folder, "*.parquet")


def _discover_one(item: str, writer: WorkListWriter, with_mtime: bool) -> None:
    storage.check_reachable(item)
    if _is_manifest(item) and not shards.is_parquet_shard(item):
        read_manifest(item, writer)
    elif storage.is_dir(item):
        for p, mtime in storage.walk_files(item, with_mtime):
            if (is_cutout(p) or shards.is_shard_name(p)) and not os.path.basename(p).startswith("."):
                writer.add(_unit(p, item, mtime=mtime, in_folder=True))
    elif storage.has_magic(item):
        root, found = storage.glob_root(item), False
        for p, mtime in storage.glob(item, with_mtime):
            if is_cutout(p) or shards.is_shard_name(p):
                found = True
                writer.add(_unit(p, root, mtime=mtime, in_folder=True))
        if not found:
            raise FileNotFoundError(f"no cutout matches {item}")
    elif not storage.exists(item):
        raise FileNotFoundError(_missing(item))
    else:
        mtime = storage.info(item).mtime.timestamp() if with_mtime else None
        writer.add(_unit(item, storage.parent_and_name(item)[0], mtime=mtime))


def check_inputs(inputs: list[str]) -> None:
    """Fail before any work for an input argument that is not there (a listing running beside the
    classification would reach it only after work has begun); a glob is checked when it is listed."""
    for item in inputs:
        storage.check_reachable(item)
        if not storage.has_magic(item) and not storage.exists(item):
            raise FileNotFoundError(_missing(item))


def _missing(item: str) -> str:
    return (f"input {item} is a broken symbolic link" if not storage.is_remote(item) and os.path.lexists(item)
            else f"input {item} does not exist")


def _shard_unit(record: dict, shard_relative_path: str, mtime: float | None) -> Unit:
    """A shard's record as a unit.

    Ids the shard holds (its id column, a WebDataset JSON id) are given ids, like a manifest's. Its
    fallback ids (``<shard name>#<row>``, the tar key, the HDU's EXTNAME) are like file stems:
    kept when unique in the run, else replaced by ``<shard path below the input root>#<row>``.
    """
    given = record.get("id_given", False)
    label = record["source_path"][len(record["shard"]):]
    return Unit(source_path=record["source_path"], relative_path=shard_relative_path + label,
                given_id=record["object_id"] if given else None, stem=None if given else record["object_id"],
                ra=record["ra"], dec=record["dec"], shard=record["shard"], shard_layout=record["shard_layout"],
                shard_pos=record["shard_pos"], error=record["error"],
                error_kind=record["error_kind"],
                mtime=mtime)


def _relative(path: str, root: str) -> str:
    """``path`` below ``root``, ``/``-separated; the path as given when it is not below ``root``."""
    remote = storage.is_remote(path)
    sep = "/" if remote else os.sep
    prefix = root.rstrip(sep) + sep if root else ""
    if prefix and path.startswith(prefix):
        return path[len(prefix):].replace(os.sep, "/")
    if remote:
        return path
    rel = os.path.relpath(path, root or ".")
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel.replace(os.sep, "/")


def _is_manifest(item: str) -> bool:
    return item.lower().endswith((".csv", ".parquet")) and storage.is_file(item)


def _unit(path: str, root: str, given_id: str | None = None, ra: float | None = None,
          dec: float | None = None, mtime: float | None = None, in_folder: bool = False) -> Unit:
    error = None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a file name, kept by Python as surrogates
        path = os.fsencode(path).decode("utf-8", "backslashreplace")
        error = NOT_UTF8
    return Unit(source_path=path, relative_path=_relative(path, root), given_id=given_id or None, ra=ra, dec=dec,
                error=error, error_kind=None if error is None else ErrorKind.UNSUPPORTED.value, mtime=mtime,
                in_folder=in_folder)


_NEEDS_PYTHON = re.compile(r"(^|/)\.\.?(/|$)|//")
"""Paths whose normalised form needs :func:`os.path.normpath` (``.``/``..`` parts, doubled slashes)."""


def read_manifest(path: str, writer: WorkListWriter) -> None:
    """CSV or Parquet (local or in an object store) with a ``path`` column and optional ``object_id``, ``ra``, ``dec``.

    Relative paths are taken relative to the manifest's folder (its prefix, for a manifest in an
    object store); a ``path`` that is a URI is used as is. A path naming a shard stands for all
    its cutouts (their ids and positions come from the shard). Paths are read as bytes, so one
    that is not UTF-8 becomes an error row like such a file name in a folder.

    Read a record batch at a time; plain file rows are turned into units with Arrow compute
    (a Python object per row measured ~1 us each, too slow for 10^8 rows), shard and FITS rows
    (a FITS file may hold several cutouts) one by one, for the writer to open.
    """
    base = storage.parent_and_name(path)[0]
    for batch in _manifest_batches(path):
        for start in range(0, batch.num_rows, BATCH_ROWS):  # a CSV block of very short lines may hold more
            _manifest_batch(batch.slice(start, BATCH_ROWS), base, writer)


def _manifest_batches(path: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pv

    try:
        with storage.open_input(path) as f:
            if path.lower().endswith(".parquet"):
                reader = pq.ParquetFile(f)
                _check_path_column(path, reader.schema_arrow.names)
                yield from reader.iter_batches(batch_size=BATCH_ROWS)
            else:
                reader = pv.open_csv(f, read_options=pv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                     convert_options=pv.ConvertOptions(
                                         column_types={"path": pa.binary(), "object_id": pa.string()},
                                         strings_can_be_null=True))
                _check_path_column(path, reader.schema.names)
                yield from reader
    except pa.ArrowInvalid as exc:
        raise ValueError(f"manifest {path}: {exc}") from None


def _check_path_column(path: str, names: list[str]) -> None:
    if "path" not in names:
        raise ValueError(f"manifest {path} has no 'path' column, nor is it a shard with an image-bytes column "
                         f"(columns: {', '.join(names)})")


_SPECIAL = "(?i)(" + "|".join(re.escape(s) for s in shards.SHARD_SUFFIXES + shards.MEF_SUFFIXES) + ")$"


def _manifest_batch(batch: pa.RecordBatch, base: str, writer: WorkListWriter) -> None:
    table = pa.Table.from_batches([batch])
    raw = table.column("path")
    if not pa.types.is_binary(raw.type):
        raw = raw.cast(pa.string()).cast(pa.binary())
    keep = pc.fill_null(pc.greater(pc.binary_length(raw), 0), False)
    table, raw = table.filter(keep), raw.filter(keep)
    if table.num_rows == 0:
        return
    given = _optional(table, "object_id", pa.string())
    ra, dec = _optional(table, "ra", pa.float64()), _optional(table, "dec", pa.float64())
    try:
        text = raw.cast(pa.string())
    except pa.ArrowInvalid:  # a path that is not UTF-8: this batch row by row
        for i, p in enumerate(raw.to_pylist()):
            writer.add(_manifest_unit(os.fsdecode(p), base, given[i].as_py(), ra[i].as_py(), dec[i].as_py()))
        return
    special = pc.match_substring_regex(text, _SPECIAL)
    start = 0  # shards and FITS files are added row by row; runs of plain files between them stay vectorised
    for i in pc.indices_nonzero(special).to_pylist() + [len(text)]:
        if i > start:
            _plain_rows(text.slice(start, i - start), base, given.slice(start, i - start), ra.slice(start, i - start),
                        dec.slice(start, i - start), writer)
        if i < len(text):
            writer.add(_manifest_unit(text[i].as_py(), base, given[i].as_py(), ra[i].as_py(), dec[i].as_py()))
        start = i + 1


def _optional(table: pa.Table, name: str, type_: pa.DataType) -> pa.ChunkedArray:
    if name not in table.column_names:
        return pa.chunked_array([pa.nulls(table.num_rows, type_)])
    column = table.column(name)
    if name == "object_id" and column.type != pa.string():  # ids as Python's str() writes them (1.0, not 1)
        return pa.chunked_array([pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())])
    return column.cast(type_) if column.type != type_ else column


def _plain_rows(text: pa.ChunkedArray, base: str, given: pa.ChunkedArray, ra: pa.ChunkedArray,
                dec: pa.ChunkedArray, writer: WorkListWriter) -> None:
    """Manifest rows naming plain files, as :func:`_unit` would make them, with Arrow compute."""
    absolute = pc.or_(pc.starts_with(text, "/"), pc.match_substring(text, "://"))
    prefix = base.rstrip("/") + "/"
    full = pc.if_else(absolute, text, pc.binary_join_element_wise(prefix, text, ""))
    relative = pc.if_else(pc.starts_with(full, prefix), pc.utf8_slice_codeunits(full, len(prefix)), full)
    if storage.is_remote(base):
        norm = full
    else:
        absolute_base = os.path.abspath(base).rstrip("/") + "/"
        norm = pc.if_else(absolute, text, pc.binary_join_element_wise(absolute_base, text, ""))
        odd = pc.match_substring_regex(norm, _NEEDS_PYTHON.pattern)
        if pc.any(odd).as_py():
            values = norm.to_pylist()
            for i in pc.indices_nonzero(odd).to_pylist():
                values[i] = os.path.normpath(values[i])
            norm = pa.array(values, pa.string())
    writer.add_columns({"source_path": full, "relative_path": relative, "norm_path": norm,
                        "given_id": pc.if_else(pc.equal(given, ""), pa.scalar(None, pa.string()), given),
                        "ra": ra, "dec": dec})


def _manifest_unit(p: str, base: str, given: str | None, ra: float | None, dec: float | None) -> Unit:
    return _unit(p if os.path.isabs(p) or "://" in p else storage.join(base, p), base,
                 None if given is None else str(given), ra, dec)


@contextmanager
def scratch_folder(where: str | None = None) -> Iterator[str]:
    """A local folder for a run's work list and DuckDB spill files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="galaxy-infer-work-", dir=where) as folder:
        yield folder


class WorkList:
    """A run's records (:data:`RECORD_SCHEMA`) in a local Parquet file, handed out a chunk at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.num_rows = pq.ParquetFile(path).metadata.num_rows

    def chunks(self, rows: int, size: ChunkSize | None = None) -> Iterator[pa.RecordBatch]:
        """Consecutive batches of ``rows`` records (the last may be shorter), or of ``size`` rows."""
        return _cut(pq.ParquetFile(self.path).iter_batches(batch_size=rows), size or fixed_size(rows))


ChunkSize = Callable[[int], int]
"""The rows of the next chunk, given how many rows earlier chunks took (at most the rows read at a time)."""


def fixed_size(rows: int) -> ChunkSize:
    return lambda _taken: rows


def _cut(batches: Iterable[pa.RecordBatch], size: ChunkSize) -> Iterator[pa.RecordBatch]:
    """Record batches re-cut into consecutive batches of ``size`` records.

    A batch of the right size passes as it is; only pieces around a file's end or a change of size
    are joined or cut. Never a slice of a larger batch: pickled for a task, a slice carries its
    parent's whole buffers (measured: 2 MB for 1,024 paths cut from 65,536).
    """
    buffered: list[pa.RecordBatch] = []
    count = taken = 0
    rows = size(taken)
    for batch in batches:
        if not buffered and batch.num_rows == rows:
            yield batch
            taken += rows
            rows = size(taken)
            continue
        buffered.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(buffered, RECORD_SCHEMA)
            yield _compact(table.slice(0, rows))
            rest = table.slice(rows)
            buffered, count = ([_compact(rest)] if rest.num_rows else []), rest.num_rows
            taken += rows
            rows = size(taken)
    if count:
        yield _compact(pa.Table.from_batches(buffered, RECORD_SCHEMA))


def _compact(table: pa.Table) -> pa.RecordBatch:
    """One batch holding just ``table``'s rows (a copy, so no parent buffer travels with it)."""
    return table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks().to_batches(
        max_chunksize=max(1, table.num_rows))[0] if table.num_rows else RECORD_SCHEMA.empty_table().to_batches()[0]


class Listing:
    """Discovery running in a thread, its records handed out while it lists (see the module docstring).

    Records carry provisional ids (:func:`galaxy_infer.ids.provisional_records`); after
    :meth:`wait`, :func:`galaxy_infer.ids.assign` over :attr:`folder` gives the final ones. An
    error of discovery (an input that does not exist) is raised by :meth:`chunks` and :meth:`wait`.
    """

    def __init__(self, inputs: list[str], folder: str, fields: shards.ShardFields | None = None,
                 id_keyword: str | None = None, opener: Opener = open_here) -> None:
        self.folder = folder
        self.rows = 0
        self.finished = False
        self._files: list[str] = []
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._list, args=(inputs, fields, id_keyword, opener), daemon=True,
                                        name="galaxy-infer-listing")
        self._thread.start()

    def _list(self, inputs: list[str], fields: shards.ShardFields | None, id_keyword: str | None,
              opener: Opener) -> None:
        try:
            write_worklist(inputs, self.folder, fields, on_file=self._landed, id_keyword=id_keyword, opener=opener)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that follows the listing
            self._error = exc
        finally:
            # Arrow's pool keeps what this thread freed; handed back, the id rule's DuckDB tables that
            # follow fit in it (measured at 1e6 inputs: driver peak 388 -> 303 MB, without Ray)
            pa.default_memory_pool().release_unused()
            with self._changed:
                self.finished = True
                self._changed.notify_all()

    def _landed(self, path: str, rows: int) -> None:
        with self._changed:
            self._files.append(path)
            self.rows += rows
            self._changed.notify_all()

    @property
    def num_rows(self) -> int | None:
        """How many records there are, once the listing has ended (None before)."""
        return self.wait() if self.finished else None

    def first_batch(self) -> int | None:
        """Block until the first batch file lands or the listing ends; :attr:`num_rows` then."""
        with self._changed:
            self._changed.wait_for(lambda: self._files or self.finished)
        return self.num_rows

    def chunks(self, rows: int, size: ChunkSize | None = None) -> Iterator[pa.RecordBatch]:
        """Consecutive batches of ``rows`` records (or of ``size`` rows) in listing order, as the
        listing lands them."""
        def batches() -> Iterator[pa.RecordBatch]:
            taken = 0
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: len(self._files) > taken or self.finished)
                    landed = self._files[taken:]
                    ended = self.finished
                for path in landed:
                    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                        yield ids.provisional_records(batch)
                taken += len(landed)
                if ended and taken == len(self._files):
                    self.wait()
                    return
        return _cut(batches(), size or fixed_size(rows))

    def wait(self) -> int:
        """Wait for the listing to end; how many records it has."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.rows


def write_records(batches: Iterable[pa.RecordBatch], path: str) -> WorkList:
    """Record batches (:func:`galaxy_infer.ids.record_batches`) into the run's final work list."""
    with pq.ParquetWriter(path, RECORD_SCHEMA) as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_batches([batch]).select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA))
    return WorkList(path)


def plan(inputs: list[str], folder: str, fields: shards.ShardFields | None = None,
         id_keyword: str | None = None) -> tuple[WorkList, int]:
    """Discover ``inputs`` and give every unit its id: the run's work list in ``folder``, and its collision count."""
    listed = os.path.join(folder, "listed")
    con = ids.connect(folder, write_worklist(inputs, listed, fields, id_keyword=id_keyword))
    try:
        ids.assign(con, worklist_files(listed))
        collisions = con.execute("SELECT count(*) FROM records WHERE error IS NULL AND collision IS NOT NULL"
                                 ).fetchall()[0][0]
        work = write_records(ids.record_batches(con), os.path.join(folder, "records.parquet"))
    finally:
        con.close()
    return work, collisions


def discover(inputs: list[str], fields: shards.ShardFields | None = None, id_keyword: str | None = None) -> list[dict]:
    """The records of :func:`plan` as dicts, for small inputs (tests, tools that take a few files).

    A record has ``source_path`` (a local path or a URI), ``object_id`` (see
    :mod:`galaxy_infer.ids`), ``ra`` and ``dec``, plus the shard columns of :data:`RECORD_SCHEMA`
    for cutouts inside shards and ``error`` where a reason is already known.
    """
    with scratch_folder() as folder:
        work, _ = plan(inputs, folder, fields, id_keyword)
        rows = pq.read_table(work.path).to_pylist()
    return [{k: v for k, v in r.items() if k in RECORD_KEYS or v is not None} for r in rows]


RECORD_KEYS = ("object_id", "source_path", "ra", "dec")
"""Keys every record of :func:`discover` has; the shard columns and ``error`` are there only when set."""
