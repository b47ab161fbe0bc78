"""The Parquet catalog: its Arrow schema, file metadata and an atomic writer.

The column contract is ``docs/catalog-schema.md`` (version :data:`~galaxy_infer.schema.CATALOG_SCHEMA_VERSION`):
the prediction columns are a function of the model's tree, flags and output options
(:class:`Layout`), which every file's metadata records, so the Arrow schema can be rebuilt from it.
A catalog is written into a hidden stage beside its output and published only when complete
(see :class:`CatalogWriter`), so a crash never leaves a half-written catalog that looks finished.
"""
from __future__ import annotations

import collections
import fnmatch
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from galaxy_infer import __version__, storage
from galaxy_infer.environment import versions
from galaxy_infer.errors import TRANSIENT_PREFIX, ErrorKind, is_transient
from galaxy_infer.model import ModelInfo
from galaxy_infer.schema import CATALOG_SCHEMA_VERSION, GZ2, Flag, Schema
from galaxy_infer.trees import resolve_tree, tree_reference
from galaxy_infer.workers import DEVICES_METADATA_KEY, WORKER_KEY, WorkerTally

SUMMARY_NAME = "_run_summary.json"
"""Leading underscore: pyarrow, pandas and DuckDB globs skip it when reading the folder."""
PARTS_GLOB = "part-*.parquet"
STAGE_TIMING_KEY = b"galaxy_infer.stage_seconds"
ERROR_EXAMPLES = 3
TOP_REASONS = 10
TRACKED_REASONS = 100
"""Distinct reason heads a run counts by name; more are counted together (a reason without a colon is its own head)."""
TREE_KEY = "galaxy_infer.tree"
FLAGS_KEY = "galaxy_infer.flags"
OUTPUT_KIND_KEY = "galaxy_infer.output_kind"
INTERVALS_KEY = "galaxy_infer.dirichlet_intervals"
VERSIONS_KEY = "galaxy_infer.versions"


@dataclass(frozen=True)
class Layout:
    """What decides a catalog's prediction columns: the tree, the flags, and whether a Dirichlet
    model's concentrations and 90% intervals are written too."""

    tree: Schema = GZ2
    flags: tuple[Flag, ...] | None = None
    intervals: bool = False

    @property
    def flag_list(self) -> tuple[Flag, ...]:
        return self.tree.flags if self.flags is None else self.flags

    @classmethod
    def of(cls, model: ModelInfo, intervals: bool = False) -> Layout:
        return cls(model.tree, model.flags, intervals and model.output_kind == "dirichlet")

    @classmethod
    def from_metadata(cls, metadata: dict) -> Layout:
        """The layout a file's metadata records (GZ2 with its odd-feature flags when it records none)."""
        md = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
              for k, v in metadata.items()}
        if TREE_KEY not in md:
            return cls()
        tree = resolve_tree(json.loads(md[TREE_KEY]))
        flags = tuple(Flag.from_dict(f) for f in json.loads(md[FLAGS_KEY])) if FLAGS_KEY in md else None
        return cls(tree, flags, md.get(INTERVALS_KEY) == "true")

    def metadata(self) -> dict[str, str]:
        return {TREE_KEY: json.dumps(tree_reference(self.tree), sort_keys=True),
                FLAGS_KEY: json.dumps([f.to_dict() for f in self.flag_list], sort_keys=True),
                INTERVALS_KEY: json.dumps(self.intervals)}


def prediction_fields(layout: Layout | Schema = Layout()) -> list[pa.Field]:
    """The prediction columns, in contract order: fractions, proportions asked, flag probabilities,
    flags, then (Dirichlet models with intervals) concentrations and the 5% and 95% quantiles."""
    if isinstance(layout, Schema):
        layout = Layout(layout)
    tree, flags = layout.tree, layout.flag_list
    fields = [pa.field(c, pa.float32()) for c in tree.answer_columns]
    fields += [pa.field(c, pa.float32()) for c in tree.asked_columns]
    fields += [pa.field(f"{f.column}_prob", pa.float32()) for f in flags]
    fields += [pa.field(f"{f.column}_flag", pa.bool_()) for f in flags]
    if layout.intervals:
        fields += [pa.field(c.removesuffix("_fraction") + "_concentration", pa.float32()) for c in tree.answer_columns]
        fields += [pa.field(f"{c}_q05", pa.float32()) for c in tree.answer_columns]
        fields += [pa.field(f"{c}_q95", pa.float32()) for c in tree.answer_columns]
    return fields


def arrow_schema(metadata: dict[str, str] | None = None, layout: Layout | Schema | None = None) -> pa.Schema:
    """Every catalog column, in contract order; the layout comes from ``metadata`` unless given."""
    if layout is None:
        layout = Layout.from_metadata(metadata or {})
    fields = [
        pa.field("object_id", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("ra", pa.float64()),
        pa.field("dec", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
        *prediction_fields(layout),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
    return pa.schema(fields, metadata=metadata)


def file_metadata(model: ModelInfo, run_id: str, intervals: bool = False) -> dict[str, str]:
    """Key-value metadata written into every Parquet file of a run (the tree and flags included)."""
    return {
        "galaxy_infer.schema_version": CATALOG_SCHEMA_VERSION,
        "galaxy_infer.model_id": model.model_id,
        "galaxy_infer.model_sha256": model.sha256,
        "galaxy_infer.recipe": model.recipe.to_json(),
        "galaxy_infer.thresholds": json.dumps(model.thresholds, sort_keys=True),
        "galaxy_infer.code_version": __version__,
        VERSIONS_KEY: json.dumps(versions(), sort_keys=True),
        "galaxy_infer.run_id": run_id,
        "galaxy_infer.created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        OUTPUT_KIND_KEY: model.output_kind,
        **Layout.of(model, intervals).metadata(),
    }


def catalog_table(ids: dict[str, Any], errors: list[str | None], predictions: dict[str, np.ndarray] | None,
                  model_id: str, run_id: str, layout: Layout = Layout(),
                  kinds: list[str | None] | None = None) -> pa.Table:
    """One batch of catalog rows; prediction columns are null where ``errors`` has a reason.

    ``ids`` holds ``object_id``, ``source_path``, ``ra`` and ``dec`` sequences; ``predictions``
    holds one value per row for every prediction column of ``layout`` (ignored on error rows).
    ``kinds`` gives each error row its :class:`~galaxy_infer.errors.ErrorKind` (default ``corrupt``).
    """
    n = len(errors)
    if kinds is None:
        kinds = [None] * n
    kinds = [None if e is None else (k or ErrorKind.CORRUPT) for e, k in zip(errors, kinds)]
    failed = np.array([e is not None for e in errors], dtype=bool)
    columns: dict[str, pa.Array] = {
        "object_id": pa.array(ids["object_id"], pa.string()),
        "source_path": pa.array(ids["source_path"], pa.string()),
        "ra": pa.array(ids["ra"], pa.float64(), from_pandas=True),
        "dec": pa.array(ids["dec"], pa.float64(), from_pandas=True),
        "status": pa.array(np.where(failed, "error", "ok"), pa.string()),
        "error": pa.array(errors, pa.string()),
        "error_kind": pa.array([None if k is None else str(k) for k in kinds], pa.string()),
    }
    for f in prediction_fields(layout):
        if predictions is None:
            columns[f.name] = pa.nulls(n, f.type)
        else:
            columns[f.name] = pa.array(np.asarray(predictions[f.name]), f.type, mask=failed)
    columns["model_id"] = pa.array([model_id] * n, pa.string())
    columns["run_id"] = pa.array([run_id] * n, pa.string())
    return pa.Table.from_pydict(columns, schema=arrow_schema(layout=layout))


def unreadable_now(table: pa.Table) -> pa.ChunkedArray:
    """Rows whose bytes could not be read this time (kind ``unreadable-now``): not held, tried again.

    Files of schema version 1 have no ``error_kind``; their reasons start ``cannot read now:``.
    """
    if "error_kind" in table.column_names:
        return pc.fill_null(pc.equal(table.column("error_kind"), ErrorKind.UNREADABLE_NOW.value), False)
    return pc.fill_null(pc.starts_with(table.column("error"), TRANSIENT_PREFIX), False)


def reason_head(reason: str) -> str:
    """A reason without its particulars (what follows the first ':'), for the summary's ``errors_by_reason``.

    Reasons that the bytes could not be read now keep their ``cannot read now:`` prefix
    (``cannot read now: permission denied``), so transient kinds stay apart from bad bytes.
    """
    if is_transient(reason):
        return TRANSIENT_PREFIX + reason_head(reason[len(TRANSIENT_PREFIX):])
    return reason.split(":", 1)[0].strip()


class ErrorTally:
    """Errors by kind with a few examples each, and by reason head: bounded however many rows fail.

    Kinds are the few :class:`~galaxy_infer.errors.ErrorKind` values; reason heads are free text
    (a reason without a colon is its own head), so at most :data:`TRACKED_REASONS` are counted by
    name and the rest as ``other_error_reasons``. A tally travels as :meth:`to_dict` (a worker's
    record of its chunk) and is added up with :meth:`merge`.
    """

    def __init__(self) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[dict[str, str]]] = {}
        self.reasons: collections.Counter[str] = collections.Counter()
        self.other_reasons = 0

    def add(self, table: pa.Table) -> None:
        """Count a catalog batch's error rows (tables without ``error_kind``, schema version 1, count as ``corrupt``)."""
        errors = table.column("error")
        if errors.null_count == len(errors):
            return
        failed = table.filter(pc.is_valid(errors))
        kinds = (failed.column("error_kind").to_pylist() if "error_kind" in failed.column_names
                 else [None] * failed.num_rows)
        for path, reason, kind in zip(failed.column("source_path").to_pylist(), failed.column("error").to_pylist(),
                                      kinds):
            self._count_kind(kind or ErrorKind.CORRUPT.value, 1, [{"source_path": path, "error": reason}])
            self._count_reason(reason_head(reason), 1)

    def _count_kind(self, kind: str, n: int, examples: list[dict[str, str]]) -> None:
        self.kinds[kind] += n
        kept = self.examples.setdefault(kind, [])
        kept += examples[:ERROR_EXAMPLES - len(kept)]

    def _count_reason(self, head: str, n: int) -> None:
        if head in self.reasons or len(self.reasons) < TRACKED_REASONS:
            self.reasons[head] += n
        else:
            self.other_reasons += n

    def merge(self, record: dict[str, Any], sign: int = 1) -> None:
        """Add a tally sent as :meth:`to_dict` (``sign=-1`` takes back rows counted before and since amended)."""
        for kind, n in record["errors_by_kind"].items():
            self._count_kind(kind, sign * n, record["error_examples"].get(kind, []) if sign > 0 else [])
        for head, n in record["errors_by_reason"].items():
            self._count_reason(head, sign * n)
        self.other_reasons += sign * record["other_error_reasons"]

    def total(self) -> int:
        return sum((+self.kinds).values())

    def to_dict(self, top_reasons: int | None = None) -> dict[str, Any]:
        shown = (+self.reasons).most_common(top_reasons)
        kinds = (+self.kinds).most_common()
        return {"errors_by_kind": dict(kinds),
                "error_examples": {kind: self.examples[kind] for kind, _ in kinds},
                "errors_by_reason": dict(shown),
                "other_error_reasons": self.other_reasons + sum(self.reasons.values()) - sum(n for _, n in shown)}


class RunStats:
    """Counts rows by status, and errors by kind with a few example paths each (bounded, whatever the input)."""

    def __init__(self) -> None:
        self.rows = 0
        self.ok = 0
        self.errors = ErrorTally()
        self.started = time.perf_counter()
        self.stage_seconds: collections.Counter[str] = collections.Counter()
        self.workers = WorkerTally()

    def add(self, table: pa.Table) -> None:
        """Count a batch's rows; worker-side stage timings and what ran it travel in its schema metadata."""
        timing = (table.schema.metadata or {}).get(STAGE_TIMING_KEY)
        if timing:
            self.stage_seconds.update(json.loads(timing))
        self.workers.add(table)
        self.rows += table.num_rows
        self.errors.add(table)
        self.ok += table.column("error").null_count

    def add_record(self, record: dict[str, Any]) -> None:
        """Count a part a worker wrote, from the small record it returned (see :class:`PartTarget`)."""
        self._count(record)
        self.stage_seconds.update(record["stage_seconds"])
        if record.get("worker"):
            self.workers.add_record(record["worker"], record["rows"])

    def amend(self, change: dict[str, Any]) -> None:
        """Count a part's amendment (:meth:`PartTarget.amend`): its old rows out, their new ones in."""
        self._count(change["removed"], -1)
        self._count(change["added"])

    def _count(self, record: dict[str, Any], sign: int = 1) -> None:
        self.rows += sign * record["rows"]
        self.ok += sign * record["ok"]
        self.errors.merge(record["errors"], sign)

    def summary(self, **extra: Any) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        return {
            "rows": self.rows,
            "ok": self.ok,
            "errors": self.errors.total(),
            **self.errors.to_dict(TOP_REASONS),
            "seconds": round(seconds, 3),
            "rows_per_second": round(self.rows / seconds, 1) if seconds > 0 else None,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "versions": versions(),
            **self.workers.summary(),
            **extra,
        }


def format_errors(summary: dict[str, Any]) -> list[str]:
    """Summary lines: count and kind of error, then its example paths (summaries of schema version 1
    runs, which have no kinds, are shown by reason)."""
    lines = []
    by_kind = summary.get("errors_by_kind")
    for kind, count in (by_kind if by_kind is not None else summary.get("errors_by_reason", {})).items():
        lines.append(f"  {count:>8}  {kind}")
        lines += [f"            e.g. {e['source_path']}: {e['error']}" for e in summary["error_examples"].get(kind, [])]
    return lines


@dataclass(frozen=True)
class PartTarget:
    """Where the tasks of one run write their parts, with the file metadata.

    A task names its part after its chunk: first row in the run's input order and number of rows
    (``part-000000001024-4096.parquet``, after ``prefix``), so a retried task overwrites its own part,
    and a task Ray gave up on that still writes late (a worker declared dead that runs on) writes
    a name no accepted record has, never over a piece of its chunk split after worker deaths.
    Each part is one atomic write (:func:`~galaxy_infer.storage.write_object_atomic`). ``classify``
    writes into its run's hidden stage, published whole by :meth:`CatalogWriter.commit` after the
    parts no record named are deleted. The nightly ingest writes straight into its partition, so
    there a task writes its part ``staged``: hidden (``.part-<run>-000000001024-4096.parquet.tmp``)
    until the driver accepts its record and :meth:`publish` gives it its name. Either way nothing a
    task writes reads as rows before the driver accepted it.
    """

    stage: str
    metadata: dict[str, str]
    prefix: str = "part-"
    staged: bool = False
    defer_unreadable: bool = False
    """Leave out rows whose object could not be read now (:func:`unreadable_now`); the record counts them as
    ``deferred``. The nightly ingest retries those objects on its next run."""

    def name(self, start: int, rows: int) -> str:
        """The part's name once it holds rows of the catalog: its chunk's first row and size."""
        return f"{self.prefix}{start:012d}-{rows}.parquet"

    def uri(self, start: int, rows: int) -> str:
        """Where the task for the chunk of ``rows`` starting at row ``start`` writes its part."""
        return self._written(self.name(start, rows))

    def _written(self, name: str) -> str:
        return storage.join(self.stage, f".{name}.tmp" if self.staged else name)

    def start_of(self, part: str) -> int:
        """The first row of the chunk a part (named by :meth:`name` or :meth:`amend`) holds."""
        return int(part[len(self.prefix):len(self.prefix) + 12])

    def write(self, table: pa.Table, start: int) -> dict[str, Any]:
        """Write ``table`` (one chunk's catalog rows) as the chunk's part; return the record the driver counts.

        The record is small whatever the chunk: the part's name (None when every row was deferred and
        nothing was written), rows written, rows deferred, ok rows, errors by kind with a few examples
        (deferred rows included), stage timings (this write included) and the worker that ran the chunk.
        """
        started = time.perf_counter()
        name = self.name(start, table.num_rows)
        metadata = table.schema.metadata or {}
        errors = ErrorTally()
        errors.add(table)
        deferred = 0
        if self.defer_unreadable:
            transient = unreadable_now(table)
            deferred = pc.sum(transient).as_py() or 0
            table = table.filter(pc.invert(transient))
        tally = WorkerTally()
        tally.add(table)
        devices = json.dumps(tally.summary()["prediction_workers"])
        part = table.replace_schema_metadata({**self.metadata, DEVICES_METADATA_KEY: devices})
        if part.num_rows:
            self._put(self._written(name), part)
        timing = json.loads(metadata.get(STAGE_TIMING_KEY, b"{}"))
        timing["write"] = time.perf_counter() - started
        worker = metadata.get(WORKER_KEY)
        return {"part": name if part.num_rows else None, "rows": table.num_rows, "deferred": deferred,
                "ok": table.num_rows + deferred - errors.total(), "errors": errors.to_dict(TOP_REASONS),
                "stage_seconds": timing, "worker": json.loads(worker) if worker else None}

    def publish(self, name: str) -> str:
        """Give a staged part whose record the driver accepted its name (see
        :func:`~galaxy_infer.storage.publish_file`); returns where its rows now are."""
        final = storage.join(self.stage, name)
        storage.publish_file(self._written(name), final)
        return final

    def amend(self, name: str, fixes: pa.Table) -> dict[str, Any]:
        """Give the part ``name`` the id rule's final answers, as a new part that replaces it.

        ``fixes`` (:func:`galaxy_infer.ids.overrides`, with ``pos``, the row in the part) sets final
        object ids, turns colliding rows into ``id-collision`` error rows and removes second
        listings of one input. The amended rows go to ``part-<start>-<rows>-ids.parquet`` and the
        part as the task wrote it stays until the commit drops it, so a retried amendment gives the
        same file. Returns the names and the change to the run's counts (``removed``: the changed
        rows as they were; ``added``: as they are now).
        """
        written = self._written(name)
        part = pq.read_table(pa.BufferReader(storage.read_bytes(written)))
        pos = fixes.column("pos").to_numpy()
        if part.column("source_path").take(pos).to_pylist() != fixes.column("source_path").to_pylist():
            raise RuntimeError(f"{written}: its rows are not the work list's rows from {self.start_of(name)}")
        dropped = fixes.column("dropped").to_numpy(zero_copy_only=False)
        collides = pc.is_valid(fixes.column("collision")).to_numpy(zero_copy_only=False) & ~dropped
        object_ids = part.column("object_id").to_pylist()
        for p, oid in zip(pos[~dropped], fixes.column("object_id").filter(pa.array(~dropped)).to_pylist()):
            object_ids[p] = oid
        part = part.set_column(part.schema.get_field_index("object_id"), part.schema.field("object_id"),
                               pa.array(object_ids, pa.string()))
        changed = part.take(np.concatenate([pos[collides], pos[dropped]]))
        collided = changed.slice(0, int(collides.sum()))
        errors = catalog_table({k: collided.column(k).to_pylist() for k in ("object_id", "source_path", "ra", "dec")},
                               fixes.column("collision").filter(pa.array(collides)).to_pylist(), None,
                               part.column("model_id")[0].as_py(), part.column("run_id")[0].as_py(),
                               Layout.from_metadata(self.metadata), [ErrorKind.ID_COLLISION] * collided.num_rows)
        source = np.arange(part.num_rows)
        source[pos[collides]] = part.num_rows + np.arange(collided.num_rows)
        keep = np.ones(part.num_rows, dtype=bool)
        keep[pos[dropped]] = False
        uri = storage.join(self.stage, name.removesuffix(".parquet") + "-ids.parquet")
        self._put(uri, pa.concat_tables([part, errors.cast(part.schema)]).take(source[keep]))
        return {"part": os.path.basename(uri), "replaces": name,
                "removed": _counts(changed), "added": _counts(errors)}

    @staticmethod
    def _put(uri: str, table: pa.Table) -> None:
        storage.write_object_atomic(uri, lambda stream: pq.write_table(table, stream, compression="zstd"))


def _counts(table: pa.Table) -> dict[str, Any]:
    """Rows, ok rows and the error tally of catalog rows: what the driver adds up."""
    errors = ErrorTally()
    errors.add(table)
    return {"rows": table.num_rows, "ok": table.num_rows - errors.total(), "errors": errors.to_dict(TOP_REASONS)}


class CatalogWriter:
    """Write a catalog folder (local or object store) so that it appears complete or not at all.

    One run per output at a time (:class:`~galaxy_infer.storage.OutputLock` on ``.<name>.lock``
    beside it; a second run fails at once with :class:`~galaxy_infer.storage.Locked`). Holding
    it, the writer first cleans up after killed runs on this output (a publish a kill interrupted is
    finished, see :func:`~galaxy_infer.storage.clean_stale_stages`). Part files go to a
    hidden stage ``.<name>.tmp-<run_id>`` beside the output (fsynced locally), written by the run's
    tasks (:meth:`part_target`, :meth:`add_part`) or here (:meth:`write`); :meth:`commit` drops
    whatever else the stage holds, adds
    ``_run_summary.json`` and publishes the stage (:func:`~galaxy_infer.storage.publish_folder`:
    one rename locally; copies with the summary last on an object store). An existing output is
    replaced only with ``overwrite`` and only if it is a galaxy-infer catalog. Use as a context
    manager so a failure removes the stage and releases the lock.
    """

    def __init__(self, out_dir: str | os.PathLike, metadata: dict[str, str], run_id: str,
                 rows_per_file: int = 500_000, overwrite: bool = False) -> None:
        self.out = str(out_dir)
        self.overwrite = overwrite
        parent, name = storage.parent_and_name(self.out)
        storage.check_reachable(self.out)
        self.lock = storage.OutputLock(storage.join(parent, f".{name}.lock"))
        self.lock.__enter__()
        try:
            self.stale_removed = storage.clean_stale_stages(self.out, SUMMARY_NAME)
            check_replaceable(self.out, overwrite)
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        self.stage = storage.join(parent, f".{name}.tmp-{run_id}")
        self.metadata = metadata
        self.schema = arrow_schema(metadata)
        self.rows_per_file = rows_per_file
        self.stats = RunStats()
        self._writer: pq.ParquetWriter | None = None
        self._sink: pa.NativeFile | None = None
        self._path = ""
        self._rows_in_file = 0
        self._files = 0
        self._file_workers = WorkerTally()
        self.parts: set[str] = set()
        """Names of the parts in the stage that this run's catalog holds (written here or by tasks)."""

    def part_target(self) -> PartTarget:
        """Where tasks write their own parts; register each returned record with :meth:`add_part`."""
        return PartTarget(self.stage, dict(self.metadata))

    def add_part(self, record: dict[str, Any]) -> None:
        """Count a part a task wrote into the stage (see :meth:`PartTarget.write`)."""
        self.stats.add_record(record)
        self.parts.add(record["part"])

    def amend_part(self, change: dict[str, Any]) -> None:
        """Count a part's amendment (:meth:`PartTarget.amend`); the amended part replaces it in the catalog."""
        self.stats.amend(change)
        self.parts.discard(change["replaces"])
        self.parts.add(change["part"])

    def write(self, table: pa.Table) -> None:
        started = time.perf_counter()
        self.stats.add(table)
        self._file_workers.add(table)
        table = table.replace_schema_metadata(self.schema.metadata)
        while table.num_rows:
            if self._writer is None:
                self._open_file()
            take = min(table.num_rows, self.rows_per_file - self._rows_in_file)
            self._writer.write_table(table.slice(0, take))
            self._rows_in_file += take
            table = table.slice(take)
            if self._rows_in_file >= self.rows_per_file:
                self._close_file()
        self.stats.stage_seconds["write"] += time.perf_counter() - started

    def _open_file(self) -> None:
        self._path = storage.join(self.stage, f"part-{self._files:05d}.parquet")
        self.parts.add(os.path.basename(self._path))
        self._sink = storage.open_output(self._path)
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._files += 1

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.add_key_value_metadata(
                {DEVICES_METADATA_KEY: json.dumps(self._file_workers.summary()["prediction_workers"])})
            self._file_workers = WorkerTally()
            self._writer.close()
            self._sink.close()
            if not storage.is_remote(self._path):
                storage.fsync_file(self._path)
            self._writer = None
            self._rows_in_file = 0

    def commit(self, summary: dict[str, Any]) -> str:
        """Publish the catalog, ``_run_summary.json`` last; returns the output."""
        self._close_file()
        if not self.parts:
            self._open_file()
            self._close_file()
        self._drop_strays()
        storage.write_bytes(storage.join(self.stage, SUMMARY_NAME), (json.dumps(summary, indent=2) + "\n").encode())
        if not storage.is_remote(self.stage):
            storage.fsync_dir(self.stage)
        self.lock.check()
        storage.publish_folder(self.stage, self.out, SUMMARY_NAME, replace=self.overwrite)
        self.lock.__exit__(None, None, None)
        return self.out

    def _drop_strays(self) -> None:
        """Delete what the stage holds besides this run's parts: a temp file or part of a task that died
        part-way (its chunk was split and its pieces wrote their own parts), so the catalog holds each row once."""
        for uri in storage.list_uris(self.stage):
            if os.path.basename(uri) not in self.parts:
                storage.delete_file(uri)

    def abort(self) -> None:
        try:
            self._close_file()
        finally:
            storage.delete_tree(self.stage)
            self.lock.__exit__(None, None, None)

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def check_replaceable(out: str, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``, and even then unless it is a galaxy-infer catalog.

    A catalog is ``_run_summary.json`` plus ``part-*.parquet`` files and nothing else, so a
    mistyped ``--out`` (the input folder, a home directory) is never deleted.
    """
    if not storage.is_remote(out):
        if not os.path.lexists(out):
            return
        if not os.path.isdir(out) or os.path.islink(out):
            raise FileExistsError(f"{out} exists and is not a catalog folder; refusing to replace it")
    names = storage.entries(out)
    if storage.is_remote(out) and not names:  # a prefix exists only while it holds objects
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    if not names:
        return
    others = sorted(n for n in names if n != SUMMARY_NAME and not fnmatch.fnmatch(n, PARTS_GLOB))
    if SUMMARY_NAME not in names or others:
        why = (f"it holds files that are not a catalog's: {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}"
               if others else f"it has no {SUMMARY_NAME}")
        raise FileExistsError(f"--overwrite refused: {out} is not a galaxy-infer catalog ({why}); "
                              "it was left untouched")


def read_catalog(path: str | os.PathLike) -> pa.Table:
    """All rows of a catalog folder or prefix (or one Parquet file), local or in an object store."""
    path = str(path)
    if storage.is_dir(path):
        files = [u for u in storage.list_uris(path, recursive=False)
                 if fnmatch.fnmatch(os.path.basename(u), PARTS_GLOB)]
    else:
        files = [path]
    return open_parts(files).to_table()


def open_parts(files: list[str], partitioning: ds.Partitioning | None = None,
               base: str | None = None) -> ds.Dataset:
    """Catalog Parquet files as one dataset whose schema holds every file's columns; a column a file
    lacks (``error_kind`` in schema 1 files, another tree's answers after a model change) is null in
    its rows. ``partitioning`` (with the ``base`` folder it starts below) turns folders into columns."""
    filesystem = storage.resolve(files[0])[0]
    paths = [storage.resolve(f)[1] for f in files]
    options = {"format": "parquet", "filesystem": filesystem, "partitioning": partitioning,
               "partition_base_dir": storage.resolve(base)[1] if base else None}
    found = ds.dataset(paths, **options)
    schema = pa.unify_schemas([f.physical_schema for f in found.get_fragments()],  # the first file's metadata
                              promote_options="default")
    if partitioning is not None:
        schema = pa.unify_schemas([schema, partitioning.schema])
    return ds.dataset(paths, schema=schema, **options)
