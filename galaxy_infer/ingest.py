"""Nightly incremental ingest: classify what the catalog does not yet hold, exactly once.

Layout::

    catalog/                                a folder or an object-store prefix (s3://bucket/catalog)
      .ingest.lock                          local: flock held by the running ingest (never deleted);
                                            object store: a prefix of leases (see storage.OutputLock)
      ingest_date=2026-11-20/part-<run_id>-000000004096-4096.parquet    one per task: first row, rows
      ingest_date=2026-11-21/...
      _ingest_runs/<date>-<run_id>.json     one summary per run that wrote something

The catalog is its own ledger: an inbox file is *held* when a committed Parquet file under
``ingest_date=*/`` has a row with its ``source_path`` and the model's ``model_id``; new files get
object ids that no held row has (see :func:`pending_records`). Each Ray task writes its chunk's
rows itself, as a hidden part staged in the partition (``.part-<run_id>-<first row>-<rows>.parquet.tmp``:
fsynced and renamed locally, one PUT on an object store, so it is whole or absent); a retried task
overwrites it, the pieces of a split chunk stage under their own names. The driver receives only the task's small record,
and publishes the part under its final name when it accepts the record (local: a rename; object
store: a server-side copy, then the staged object deleted). So a part is in the catalog entirely or
not at all, and only once the driver accepted it: a task that staged its part and then died never
adds rows. A run killed at any point (SIGKILL included) leaves published parts plus hidden staged
and temp files that never read as rows; the next run deletes the hidden files, re-reads the ledger
and classifies only what is missing. ``error`` rows count as held when the bytes are bad (an object
that cannot be decoded is not retried; its row says why). An object that could not be *read* this
time (permission denied, I/O error, timeout: reasons starting ``cannot read now:``) is left out of
its part by the task and counted in its record, and is retried by the next run. Files modified less
than ``settle_seconds`` ago are left for the next run, so a cutout still being copied into the
inbox is not recorded as a truncated file.
"""
from __future__ import annotations

import json
import os
import re
import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import pyarrow as pa
import pyarrow.dataset as ds

from galaxy_infer import ids, ledger, storage
from galaxy_infer.catalog import (Layout, PartTarget, RunStats, arrow_schema, file_metadata, format_errors,
                                  open_parts, prediction_fields)
from galaxy_infer.cluster import init_ray
from galaxy_infer.model import ModelInfo, load_model_info, resolve_model, run_device
from galaxy_infer.options import RunOptions
from galaxy_infer.pipeline import ray_header_reader, ray_opener, stream_tables
from galaxy_infer.progress import Progress
from galaxy_infer.worklist import (Opener, WorkList, open_here, scratch_folder, worklist_files, write_records,
                                  write_worklist)

LOCK_NAME = ".ingest.lock"
RUNS_DIR = "_ingest_runs"
PARTITION_KEY = "ingest_date"
TMP_SUFFIX = ".tmp"
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class IngestUsageError(ValueError):
    """Options that cannot work (a bad date, no inbox): reported without a traceback."""


@dataclass(kw_only=True)
class IngestConfig(RunOptions):
    """One night: the inbox to take new cutouts from, the catalog to add them to, and how to classify them."""

    inbox: str
    catalog: str
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    chunk_rows: int = 5000
    """Most rows per Ray task, and so per committed Parquet file (a task's part): fewer when ``task_rows``
    or the model's preference says so. A crash loses at most the chunks in flight."""
    settle_seconds: float = 60.0
    """Files modified more recently than this are left for the next run (still being copied in)."""


def partition_dir(catalog: str, date: str) -> str:
    return storage.join(catalog, f"{PARTITION_KEY}={date}")


def committed_stamps(catalog: str) -> list[tuple[str, int, int | None]]:
    """``ingest_date=*/*.parquet`` under the catalog (hidden temp files excluded), sorted, as
    (URI, size, mtime in ns): committed files are written once, so these tell whether one changed."""
    root = str(catalog).rstrip("/")
    found = []
    for uri, size, mtime_ns in storage.list_stamps(root):
        relative = uri[len(root) + 1:] if storage.is_remote(root) else os.path.relpath(uri, root)
        parts = relative.split("/")
        if (len(parts) == 2 and parts[0].startswith(f"{PARTITION_KEY}=") and parts[1].endswith(".parquet")
                and not parts[1].startswith(".")):
            found.append((uri, size, mtime_ns))
    return found


def committed_files(catalog: str) -> list[str]:
    """The URIs of :func:`committed_stamps`."""
    return [uri for uri, _, _ in committed_stamps(catalog)]


def held_objects(catalog: str, model_id: str) -> ledger.Ledger:
    """The ledger of ``model_id``'s committed rows, its local index brought up to date (see
    :mod:`galaxy_infer.ledger`; a corrupt committed file fails the run)."""
    return ledger.indexed(catalog, model_id, committed_stamps(catalog))


def remove_stale_temp_files(catalog: str) -> list[str]:
    """Hidden ``*.tmp`` files of killed runs (parts staged but never published, torn writes); only called
    while holding the lock, so no live run owns them."""
    root = str(catalog).rstrip("/")
    stale = [u for u in storage.list_uris(root)
             if os.path.basename(u).startswith(".") and u.endswith(TMP_SUFFIX)]
    for uri in stale:
        storage.delete_file(uri)
    return stale


def part_target(catalog: str, date: str, metadata: dict[str, str], run_id: str) -> PartTarget:
    """Where tonight's tasks write: hidden ``.part-<run>-<first row>-<rows>.parquet.tmp`` files in the
    partition, published as ``part-<run>-<first row>-<rows>.parquet`` by the driver; rows unreadable now
    are left out."""
    return PartTarget(partition_dir(catalog, date), metadata, prefix=f"part-{run_id}-", staged=True,
                      defer_unreadable=True)


class PartPublisher:
    """The driver's side of tonight's parts: publishes each part whose record it accepts, and keeps
    counters and the list of part names, nothing per object.

    Parts are published in the background, ``concurrency`` at a time (on an object store each is a copy
    and a delete), so the driver goes back to its tasks at once; :meth:`close` waits for the last ones
    and raises the first failure. The lock is checked before each publish, so a run that lost its lease
    stops committing.
    """

    def __init__(self, target: PartTarget, lock: storage.OutputLock | None = None,
                 concurrency: int = storage.PUBLISH_CONCURRENCY) -> None:
        self.target = target
        self.lock = lock
        self.concurrency = max(1, concurrency)
        self.files: list[str] = []
        self.rows = 0
        self.deferred = 0
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="publish")
        self._publishing: list[tuple[Future[str], int]] = []

    def accept(self, record: dict[str, Any]) -> None:
        """Publish the part a task wrote (its record, see :meth:`PartTarget.write`) and count it."""
        self.deferred += record["deferred"]
        if record["part"] is None:
            return
        if self.lock is not None:
            self.lock.check()
        self._collect(wait=len(self._publishing) >= 2 * self.concurrency)
        self._publishing.append((self._pool.submit(self.target.publish, record["part"]), record["rows"]))

    def _collect(self, wait: bool = False) -> None:
        if wait:
            futures.wait([f for f, _ in self._publishing], return_when=futures.FIRST_COMPLETED)
        still = []
        for future, rows in self._publishing:
            if future.done():
                self.files.append(future.result())
                self.rows += rows
            else:
                still.append((future, rows))
        self._publishing = still

    def close(self) -> None:
        """Wait until every accepted part is published, then delete this run's staged parts that no
        accepted record named (what a task Ray gave up on staged: its chunk was split and retried)."""
        futures.wait([f for f, _ in self._publishing])
        self._collect()
        self._pool.shutdown()
        for uri in storage.list_uris(self.target.stage):
            name = os.path.basename(uri)
            if name.startswith("." + self.target.prefix) and name.endswith(TMP_SUFFIX):
                storage.delete_file(uri)

    def __enter__(self) -> PartPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def pending_records(config: IngestConfig, held: ledger.Ledger, scratch: str, opener: Opener = open_here,
                    read_headers: ids.HeaderReader | None = None) -> tuple[WorkList, dict[str, Any]]:
    """Cutouts under the inbox not yet held and settled, with their object ids, as a work list in ``scratch``.

    A file is held when a row for this model has its path, whatever its id: ids of held objects
    never change. Which files are new is an anti-join of the inbox listing against ``held``
    (out of core, in DuckDB: see :func:`galaxy_infer.ids.assign`); new files get ids by the rule
    of :mod:`galaxy_infer.ids`, with every held id taken, so a new ``b/J1.jpg`` next to a held
    ``J1`` becomes ``b/J1.jpg``. A new file whose id is still taken (a repeated ``--id-keyword``
    value) is not classified: it is counted and named in ``id_collisions`` every run until the
    ids differ. Rows with ``error`` set (a file name that is not UTF-8) are error rows before any
    decoding. ``opener`` reads what shards and FITS files hold and ``read_headers`` the header ids of
    new files (in a run, both Ray tasks: :func:`ingest`).
    """
    listed = os.path.join(scratch, "listed")
    con = ids.connect(scratch, write_worklist([config.inbox], listed, config.shard_fields,
                                              with_mtime=config.settle_seconds > 0, opener=opener))
    try:
        inputs = ids.assign(con, worklist_files(listed), config.id_keyword, held=held, new_only=True,
                            read_headers=read_headers)
        held_rows = held.count(con)
        settled = f"(mtime IS NULL OR mtime <= {time.time() - config.settle_seconds!r})" \
            if config.settle_seconds > 0 else "true"
        held_count, collisions, unsettled = con.execute(f"""SELECT count(*) FILTER (WHERE held),
            count(*) FILTER (WHERE NOT held AND collision IS NOT NULL),
            count(*) FILTER (WHERE NOT held AND collision IS NULL AND NOT {settled}) FROM records""").fetchall()[0]
        examples = [r[0] for r in con.execute(f"""SELECT collision FROM records WHERE NOT held AND collision IS NOT NULL
            ORDER BY coalesce(shard, source_path), coalesce(shard_pos, 0) LIMIT {ids.EXAMPLES}""").fetchall()]
        work = write_records(ids.record_batches(con, f"NOT held AND collision IS NULL AND {settled}",
                                                "coalesce(shard, source_path), coalesce(shard_pos, 0)"),
                             os.path.join(scratch, "records.parquet"))
    finally:
        con.close()
    counts: dict[str, Any] = {"held_before": held_rows, "inbox": inputs, "already_held": held_count, "unsettled": unsettled,
                              "id_collisions": collisions, "id_collision_examples": examples}
    return work, counts


def ingest(config: IngestConfig, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One ingest run under the lock; returns its summary. Raises :class:`Locked` if another runs.

    ``on_batch(rows_so_far)`` is called after each batch from the pipeline (tests use it to
    inject failures mid-run).
    """
    if not DATE_RE.match(config.date):
        raise IngestUsageError(f"--date must be YYYY-MM-DD, got {config.date!r}")
    try:
        datetime.strptime(config.date, "%Y-%m-%d")
    except ValueError as exc:
        raise IngestUsageError(f"--date {config.date}: {exc}") from None
    config.apply_storage()
    storage.check_reachable(config.inbox)
    storage.check_reachable(config.catalog)
    if not storage.is_dir(config.inbox):
        raise IngestUsageError(f"inbox {config.inbox} is not a folder")
    catalog = config.catalog if storage.is_remote(config.catalog) else os.path.abspath(config.catalog)
    started = time.perf_counter()
    with storage.OutputLock(storage.join(catalog, LOCK_NAME), holder="ingest") as lock:
        stale = remove_stale_temp_files(catalog)
        info = load_model_info(config.model)
        held = held_objects(catalog, info.model_id)
        with scratch_folder() as scratch:
            table, counts = pending_records(config, held, scratch, ray_opener(config), ray_header_reader(config))
            summary: dict[str, Any] = {
                "run_id": config.run_id, "date": config.date, "model_id": info.model_id,
                "catalog": catalog, "stale_temp_files_removed": len(stale),
                **counts, "pending": table.num_rows,
            }
            return _ingest_work(config, catalog, info, table, summary, lock, started, on_batch)


def _ingest_work(config: IngestConfig, catalog: str, info: ModelInfo, table: WorkList, summary: dict[str, Any],
                 lock: storage.OutputLock, started: float, on_batch: Callable[[int], None] | None) -> dict[str, Any]:
    """Classify the pending work list; each task stages its part in tonight's partition, and the driver
    publishes the parts whose records it accepts (:class:`PartPublisher`)."""
    if table.num_rows == 0:
        return {**summary, "rows": 0, "ok": 0, "errors": 0, "errors_by_kind": {}, "error_examples": {},
                "errors_by_reason": {}, "other_error_reasons": 0, "files": [], "retry_next_run": 0,
                "wall_seconds": round(time.perf_counter() - started, 3)}
    device = run_device(info, config.device)
    init_ray(config.address, config.num_cpus, config.object_store_mb)
    target = part_target(catalog, config.date, file_metadata(info, config.run_id, config.dirichlet_intervals),
                         config.run_id)
    stats = RunStats()
    with Progress(table.num_rows, config.progress, what="ingested") as progress, \
            PartPublisher(target, lock) as publisher:
        for record in stream_tables(table, info, device, config, sink=target, max_rows=max(1, config.chunk_rows)):
            stats.add_record(record)
            tried = record["rows"] + record["deferred"]
            progress.update(tried, tried - record["ok"])
            if on_batch is not None:
                on_batch(progress.done)
            publisher.accept(record)
        publisher.close()
    if publisher.rows + publisher.deferred != table.num_rows:
        raise RuntimeError(f"ingest wrote {publisher.rows} rows for {table.num_rows} pending objects; "
                           "committed parts stay, a rerun classifies the rest")
    summary.update(stats.summary(), rows=publisher.rows, device=stats.workers.devices(),
                   files=sorted(f[len(catalog) + 1:] for f in publisher.files), retry_next_run=publisher.deferred,
                   wall_seconds=round(time.perf_counter() - started, 3))
    storage.write_bytes(storage.join(catalog, RUNS_DIR, f"{config.date}-{config.run_id}.json"),
                        (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def format_ingest_summary(s: dict[str, Any]) -> str:
    lines = [
        f"catalog: {s['catalog']}  partition: {PARTITION_KEY}={s['date']}",
        f"inbox: {s['inbox']}  already held: {s['already_held']}  pending: {s['pending']}  "
        f"unsettled (next run): {s['unsettled']}  id collisions (not classified): {s['id_collisions']}",
        f"rows written: {s['rows']}  ok: {s['ok']}  errors: {s['errors']}  files: {len(s['files'])}"
        + (f"  unreadable now, retried next run: {s['retry_next_run']}" if s.get("retry_next_run") else ""),
        f"model: {s['model_id']}  run: {s['run_id']}  time: {s['wall_seconds']:.1f} s"
        + (f"  stale temp files removed: {s['stale_temp_files_removed']}" if s["stale_temp_files_removed"] else ""),
    ]
    lines += [f"  {reason}" for reason in s["id_collision_examples"]]
    return "\n".join(lines + format_errors(s))


def read_ingest_catalog(catalog: str | os.PathLike, model: str | None = None) -> pa.Table:
    """Every committed row of an ingest catalog, with ``ingest_date`` as a column.

    Files of different models (a model change) may have different prediction columns; each
    column missing from a file is null in its rows. An empty catalog has no file to take the
    columns from: with ``model`` (a path or a bundled model's name) the empty table has that
    model's columns, otherwise only those every catalog has (ids, position, status, error,
    model_id, run_id), never another tree's.
    """
    files = committed_files(str(catalog))
    if files:
        partitioning = ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive")
        return open_parts(files, partitioning, str(catalog)).to_table().replace_schema_metadata(None)
    if model is not None:
        schema = arrow_schema(layout=Layout.of(load_model_info(resolve_model(model))))
    else:
        predictions = {f.name for f in prediction_fields()}
        schema = pa.schema([f for f in arrow_schema() if f.name not in predictions])
    return schema.append(pa.field(PARTITION_KEY, pa.string())).empty_table()
