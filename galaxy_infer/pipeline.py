"""The classification pipeline on Ray: read -> preprocess -> predict -> postprocess -> write.

The driver cuts the inputs into chunks and keeps a bounded number in flight as Ray tasks. On CPU
one task runs read, preprocess, predict and postprocess for its chunk, so pixels never leave the
process that decoded them; on GPU, decode tasks on CPUs feed prediction tasks that reserve
``num_gpus``. Each worker process builds its onnxruntime session once and keeps it. Each task
writes its chunk's rows as a part of the run's hidden stage and returns a small record; the driver
keeps counters and the list of parts and commits the catalog (:class:`~galaxy_infer.catalog.CatalogWriter`).

Plain tasks rather than Ray Data: measured on 2 cores, Ray Data's block conversions between
operators, its executor and its helper actors took about 40% of the CPU this pipeline needs.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from galaxy_infer import ids, storage
from galaxy_infer.catalog import STAGE_TIMING_KEY, CatalogWriter, Layout, PartTarget, catalog_table, file_metadata
from galaxy_infer.cluster import (ClusterWatch, init_ray, node_kind, on_cluster, plan_workers,
                                  wait_for_one)
from galaxy_infer.errors import ErrorKind, InputError
from galaxy_infer.model import ModelInfo, Predictor, load_model_info, run_device
from galaxy_infer.options import RunOptions
from galaxy_infer.postprocess import postprocess
from galaxy_infer.preprocess import Recipe, preprocess
from galaxy_infer.progress import Progress
from galaxy_infer.shards import ShardFields, read_units
from galaxy_infer.workers import WORKER_KEY
from galaxy_infer.worklist import (OPEN_FILES, RECORD_SCHEMA, ChunkSize, Listing, Opener, Pending, WorkList,
                                  check_inputs, discover, fixed_size, open_files, scratch_folder, worklist_files)

ID_COLUMNS = ("object_id", "source_path", "ra", "dec")
STAGE_SECONDS_KEY = "read_preprocess_seconds"
TASK_RETRIES = 5
SPLIT_RETRIES = 1
"""Retries of a single file cut out of a chunk whose worker kept dying (larger pieces are split again at once)."""
WORKER_DIED = "worker died while decoding"
WORKER_DIED_OPENING = "worker died while opening"
NON_FINITE = "model output is not finite"
DEFAULT_BATCH_SIZE = 256
DEFAULT_TASK_ROWS = 16384
"""Rows of a task on the CPU path at most, which decodes and predicts a batch at a time: fewer,
larger tasks cost the driver less (about 7 ms of its CPU a task, Ray's work included, on 2 cores);
the chunks shrink towards the run's end (:meth:`~galaxy_infer.cluster.WorkerPlan.guided_rows`)."""
TASK_PIXEL_BYTES = 64 << 20
"""Model inputs a decode task sends on at most (the GPU path, where a chunk's pixels travel): 1,024
cutouts of a 64-pixel model (48 MiB), 108 of a 224-pixel one, so that memory does not grow with the
model's input size."""


def run_sizes(info: ModelInfo, config: RunOptions, pixels_travel: bool = False) -> tuple[int, int]:
    """Batch size and task rows: the user's, else the model's preference, else the defaults (tasks whose
    pixels travel bounded by :data:`TASK_PIXEL_BYTES`); a batch never exceeds a task, so padding stays small."""
    image_bytes = 4 * info.recipe.channels * info.recipe.input_size ** 2
    default = min(DEFAULT_TASK_ROWS, TASK_PIXEL_BYTES // image_bytes) if pixels_travel else DEFAULT_TASK_ROWS
    rows = config.task_rows or info.runtime.get("task_rows") or max(1, default)
    batch = config.batch_size or info.runtime.get("batch_size") or DEFAULT_BATCH_SIZE
    return (batch if config.batch_size else min(batch, rows)), rows


@dataclass(kw_only=True)
class RunConfig(RunOptions):
    """One classification run: its inputs, its output, and how to classify them."""

    inputs: list[str]
    out: str
    overwrite: bool = False


def read_and_preprocess(batch: dict[str, np.ndarray], recipe: Recipe,
                        filesystem: pafs.FileSystem | None = None) -> dict[str, np.ndarray]:
    """Decode each cutout of a batch (a file, fetched many at once, or a shard row) into a model input;
    failures become reasons.

    ``filesystem`` reads every file through that filesystem instead of the one its URI names.
    """
    n = len(batch["source_path"])
    pixels = np.zeros((n, recipe.channels, recipe.input_size, recipe.input_size), dtype=np.float32)
    errors = np.full(n, "", dtype=object)
    kinds = np.full(n, None, dtype=object)
    known = batch.get("error_kind") or [None] * n
    ra = np.asarray(batch["ra"], dtype=np.float64).copy()
    dec = np.asarray(batch["dec"], dtype=np.float64).copy()
    started = time.perf_counter()
    for i, load in read_units(batch, recipe, filesystem):
        try:
            decoded = load()
            preprocess(decoded.image, recipe, out=pixels[i])
        except InputError as exc:
            errors[i], kinds[i] = str(exc), known[i] or exc.kind
            continue
        except (MemoryError, RecursionError) as exc:
            errors[i], kinds[i] = f"could not decode: {type(exc).__name__}", ErrorKind.TOO_LARGE
            continue
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a night's run
            errors[i], kinds[i] = f"unexpected {type(exc).__name__} while decoding: {exc}"[:300], ErrorKind.CORRUPT
            continue
        if decoded.ra is not None and np.isnan(ra[i]):
            ra[i], dec[i] = decoded.ra, decoded.dec
    return {**{k: batch[k] for k in ("object_id", "source_path")}, "ra": ra, "dec": dec,
            "error": errors, "error_kind": kinds, "pixels": pixels, STAGE_SECONDS_KEY: time.perf_counter() - started}


def predict_and_postprocess(decoded: dict[str, np.ndarray], predictor: Predictor, run_id: str,
                            intervals: bool = False) -> pa.Table:
    """Predict the rows that decoded, shape every row for the catalog (the model's tree and flags);
    stage timings ride in the schema metadata."""
    info = predictor.info
    layout = Layout.of(info, intervals)
    errors = [e if e else None for e in decoded["error"]]
    kinds = list(decoded["error_kind"])
    ok = np.array([e is None for e in errors], dtype=bool)
    predictions = None
    started = predicted = time.perf_counter()
    if ok.any():
        # error rows get a harmless value (1 is a valid logit and concentration); their columns are masked
        outputs = np.ones((len(errors), info.tree.n_answers), np.float32)
        outputs[ok] = predictor.predict(decoded["pixels"] if ok.all() else decoded["pixels"][ok])
        predicted = time.perf_counter()
        non_finite = ok & ~np.isfinite(outputs).all(axis=1)
        outputs[non_finite] = 1  # postprocessed like error rows, then made error rows below
        predictions = postprocess(outputs, info.thresholds, info.tree, info.flags, info.output_kind, layout.intervals)
        for column in predictions.values():
            if column.dtype.kind == "f":
                non_finite |= ok & ~np.isfinite(column)
        for i in np.flatnonzero(non_finite):
            errors[i] = f"{NON_FINITE}: the model gave NaN or inf for this input; check the model and the file's pixels"
            kinds[i] = ErrorKind.MODEL_OUTPUT
    table = catalog_table({k: decoded[k] for k in ID_COLUMNS}, errors, predictions, info.model_id, run_id, layout,
                          kinds)
    timing = {"read_preprocess": float(decoded[STAGE_SECONDS_KEY]), "predict": predicted - started,
              "postprocess": time.perf_counter() - predicted}
    return table.replace_schema_metadata({STAGE_TIMING_KEY: json.dumps(timing)})


@dataclass(frozen=True)
class PredictorSpec:
    """What a worker needs to build its onnxruntime session; the model bytes travel once, by reference."""

    model_id: str
    model_path: str
    device: str
    """As asked (``auto``, ``cpu`` or ``cuda``): each worker resolves it against its own hardware."""
    batch_size: int
    num_threads: int
    model_bytes: Any = field(compare=False)
    """ObjectRef of the ONNX file: nested in the spec, Ray passes the reference, not the bytes, to each task."""
    intervals: bool = field(default=False, compare=False)


_PREDICTOR: dict[PredictorSpec, Predictor] = {}


def cached_predictor(spec: PredictorSpec) -> Predictor:
    """The worker process's session for ``spec``, built on its first task and reused by the next ones.

    The device is decided here, where prediction runs: ``auto`` takes CUDA when this worker's
    onnxruntime really runs on it; ``cuda`` raises :class:`ModelError` when it cannot.
    """
    if spec not in _PREDICTOR:
        import ray

        _PREDICTOR.clear()
        _PREDICTOR[spec] = Predictor(spec.model_path, device=spec.device, batch_size=spec.batch_size,
                                     num_threads=spec.num_threads, model_bytes=ray.get(spec.model_bytes))
    return _PREDICTOR[spec]


def worker_record(predictor: Predictor, decoded_on: str) -> dict[str, str]:
    """What ran a chunk: the prediction worker's node kind, device and execution provider, and where it was decoded."""
    import ray

    context = ray.get_runtime_context()
    return {"kind": node_kind(), "device": predictor.device, "provider": predictor.providers[0],
            "accelerator": context.get_node_labels().get("ray.io/accelerator-type", ""),
            "node": context.get_node_id(), "decoded_on": decoded_on}


def with_worker_record(table: pa.Table, record: dict[str, str]) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), WORKER_KEY: json.dumps(record)})


def records_batch(records: pa.Table) -> dict[str, np.ndarray]:
    batch = {"object_id": np.asarray(records.column("object_id").to_pylist(), dtype=object),
             "source_path": np.asarray(records.column("source_path").to_pylist(), dtype=object),
             "ra": records.column("ra").to_numpy(zero_copy_only=False),
             "dec": records.column("dec").to_numpy(zero_copy_only=False)}
    for name in ("shard", "shard_layout", "shard_pos", "error", "error_kind"):
        if name in records.column_names:
            batch[name] = records.column(name).to_pylist()
    return batch


def classify_chunk(records: pa.Table, recipe: Recipe, spec: PredictorSpec, run_id: str, sink: PartTarget,
                   start: int) -> dict[str, Any]:
    """All five stages in one worker, a batch at a time, so pixels never leave the process that decoded
    them and it holds one batch's (the CPU path); the rows go to the chunk's part and the part's small
    record goes back."""
    predictor = cached_predictor(spec)
    tables = [predict_and_postprocess(read_and_preprocess(records_batch(records.slice(i, spec.batch_size)), recipe),
                                      predictor, run_id, spec.intervals)
              for i in range(0, records.num_rows, spec.batch_size)]
    timing: collections.Counter[str] = collections.Counter()
    for table in tables:
        timing.update(json.loads(table.schema.metadata[STAGE_TIMING_KEY]))
    table = pa.concat_tables(tables).replace_schema_metadata({STAGE_TIMING_KEY: json.dumps(timing)})
    return sink.write(with_worker_record(table, worker_record(predictor, node_kind())), start)


def decode_chunk(records: pa.Table, recipe: Recipe) -> dict[str, np.ndarray]:
    """Read and preprocess on any CPU of the cluster (the GPU path); the pixels go straight from this
    worker's object store to the prediction task's node, never through the driver."""
    return {**read_and_preprocess(records_batch(records), recipe), "decoded_on": node_kind()}


def predict_chunk(decoded: dict[str, np.ndarray], spec: PredictorSpec, run_id: str, sink: PartTarget,
                  start: int) -> dict[str, Any]:
    predictor = cached_predictor(spec)
    table = predict_and_postprocess(decoded, predictor, run_id, spec.intervals)
    return sink.write(with_worker_record(table, worker_record(predictor, str(decoded["decoded_on"]))), start)


def records_table(inputs: list[str], fields: ShardFields | None = None, id_keyword: str | None = None) -> pa.Table:
    """The records of a few inputs in memory (tools and tests); :func:`classify` streams them from a work list."""
    return pa.Table.from_pylist(discover(inputs, fields, id_keyword), schema=RECORD_SCHEMA)


def error_rows(records: pa.Table, errors: list[str], kind: ErrorKind, info: ModelInfo, run_id: str,
               layout: Layout) -> pa.Table:
    """Catalog rows with ``status = 'error'`` (of ``kind``) for records that never reached a worker's result."""
    return catalog_table({k: records.column(k).to_pylist() for k in ID_COLUMNS}, errors, None, info.model_id,
                         run_id, layout, [kind] * len(errors))


def stream_tables(table: pa.Table | WorkList | Listing, info: ModelInfo, device: str, config: RunOptions,
                  sink: PartTarget, max_rows: int | None = None) -> Iterator[dict[str, Any]]:
    """Classify ``table``'s records in chunks on Ray and yield one record per chunk as it finishes.

    Each task writes its chunk's rows as a part with ``sink`` and the result is the small record it
    returns (:meth:`~galaxy_infer.catalog.PartTarget.write`), so no row passes through the driver.
    ``max_rows`` caps a chunk (the nightly ingest's ``chunk_rows``).

    A :class:`~galaxy_infer.worklist.WorkList` is read a chunk at a time as chunks are submitted,
    and a :class:`~galaxy_infer.worklist.Listing` while discovery is still listing, so the driver
    never holds the run's records.

    ``device`` is as asked (``auto``, ``cpu``, ``cuda``); each prediction worker resolves it. The
    number of chunks in flight follows the cluster's current size (see :class:`~galaxy_infer.cluster.WorkerPlan`), so
    memory stays flat however many inputs there are. A chunk whose worker dies (process killed,
    node lost) is retried by Ray, then split down to the file that kills it (:class:`ChunkResults`);
    every record is yielded exactly once.
    """
    import ray

    info = replace(info, recipe=info.recipe.with_limits(config.limits))
    plan = plan_workers(device, config.num_gpus_per_worker, config.num_workers)
    watch = ClusterWatch(plan, config.gpu_wait_seconds, can_grow=on_cluster(config.address))
    batch_size, task_rows = run_sizes(info, config, pixels_travel=bool(plan.gpus_per_task))
    rows = min(task_rows, max_rows or task_rows)
    if config.task_rows or info.runtime.get("task_rows"):  # asked for: every chunk but a small run's has that many
        listed = table.num_rows if table.num_rows is not None else sys.maxsize  # a listing still running is large
        size = fixed_size(plan.chunk_rows(listed, rows, watch.resources()))
    else:
        def size(taken: int) -> int:
            if isinstance(table, Listing) and not table.finished:  # what is listed so far stands for what is left
                return plan.guided_rows(table.rows, table.rows, rows, watch.resources())
            known = table.num_rows
            return plan.guided_rows(known - taken, known, rows, watch.resources())
    spec = PredictorSpec(info.model_id, config.model, device, batch_size, 2 if plan.gpus_per_task else 1,
                         ray.put(Path(config.model).read_bytes()), config.dirichlet_intervals)
    if plan.gpus_per_task:
        decode, predict = ray.remote(decode_chunk), ray.remote(predict_chunk)

        def submit(chunk: pa.Table, start: int, retries: int) -> ray.ObjectRef:
            retry = {"max_retries": retries, "retry_exceptions": False}
            decoded = decode.options(num_cpus=1, **retry).remote(chunk, info.recipe)
            return predict.options(**plan.task_resources, **retry).remote(decoded, spec, config.run_id, sink, start)
    else:
        whole = ray.remote(classify_chunk)

        def submit(chunk: pa.Table, start: int, retries: int) -> ray.ObjectRef:
            return whole.options(**plan.task_resources, max_retries=retries, retry_exceptions=False).remote(
                chunk, info.recipe, spec, config.run_id, sink, start)

    pending = ChunkResults(submit, watch, info, config.run_id, Layout.of(info, config.dirichlet_intervals), sink)
    chunks = table.chunks(rows, size) if isinstance(table, (WorkList, Listing)) else _slices(table, size)
    start = 0
    for chunk in chunks:
        while len(pending) >= watch.in_flight():
            yield pending.next_finished()
        pending.submit(chunk, start)
        start += chunk.num_rows
    while len(pending):
        yield pending.next_finished()


def _slices(table: pa.Table, size: ChunkSize) -> Iterator[pa.Table]:
    start = 0
    while start < table.num_rows:
        rows = size(start)
        yield table.slice(start, rows)
        start += rows


class ChunkResults:
    """Chunks in flight and their results, with poison files isolated.

    Ray reruns a chunk whose worker process died (``TASK_RETRIES``), which covers crashes and lost
    nodes. When those are spent the chunk is cut in halves, and a half whose worker dies is cut
    again, down to single files (tried ``SPLIT_RETRIES`` more times): a file whose worker still
    dies becomes an ``error`` row and every other file of the chunk is classified. A chunk of
    16,384 with one poison file costs about 6 + 14 + 2 worker deaths. On GPU a chunk is a decode
    task feeding a prediction task; a death in either fails the prediction task's result, and the
    pair is split alike. Exceptions raised inside a task are not caught: per-file problems are
    already error rows, so one is a bug and stops the run. Waiting goes through
    :func:`~galaxy_infer.cluster.wait_for_one`, so a cluster that cannot run prediction still fails the run.
    """

    def __init__(self, submit: Callable[[pa.Table, int, int], Any], watch: ClusterWatch, info: ModelInfo,
                 run_id: str, layout: Layout, sink: PartTarget) -> None:
        self._submit = submit
        self.watch = watch
        self.info, self.run_id, self.layout, self.sink = info, run_id, layout, sink
        self.chunks: dict[Any, tuple[int, pa.Table]] = {}

    def __len__(self) -> int:
        return len(self.chunks)

    def submit(self, chunk: pa.Table, start: int, retries: int | None = None) -> None:
        """Run ``chunk``, whose first row is row ``start`` of the run's inputs (which names its part)."""
        self.chunks[self._submit(chunk, start, TASK_RETRIES if retries is None else retries)] = (start, chunk)

    def next_finished(self) -> dict[str, Any]:
        """The record of the next chunk's part; a chunk being split yields its pieces' as they finish."""
        import ray

        while True:
            ref, _ = wait_for_one(list(self.chunks), self.watch)
            start, chunk = self.chunks.pop(ref)
            try:
                return ray.get(ref)
            except ray.exceptions.RayError as exc:
                if not worker_died(exc):
                    raise
            if chunk.num_rows == 1:
                reason = (f"{WORKER_DIED}: the worker process reading this file died on every try (a crash or "
                          "out of memory); the other files of its chunk were classified")
                rows = error_rows(chunk, [reason], ErrorKind.WORKER_DIED, self.info, self.run_id, self.layout)
                return self.sink.write(rows, start)
            half = (chunk.num_rows + 1) // 2
            for offset, piece in ((0, chunk.slice(0, half)), (half, chunk.slice(half))):
                self.submit(piece, start + offset, SPLIT_RETRIES if piece.num_rows == 1 else 0)


def worker_died(exc: BaseException) -> bool:
    """Whether a task failed because its worker process died rather than by raising."""
    import ray

    deaths = (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)
    return isinstance(exc, deaths) or isinstance(getattr(exc, "cause", None), deaths)


def ray_header_reader(config: RunOptions) -> ids.HeaderReader:
    """:func:`~galaxy_infer.ids.header_values` as Ray tasks of :data:`~galaxy_infer.worklist.OPEN_FILES`
    files (the nightly ingest's header ids of new files), Ray started if it is not running."""
    import ray

    task = ray.remote(num_cpus=1)(ids.header_values)

    def read(paths: list[str], keyword: str) -> list[str | None]:
        init_ray(config.address, config.num_cpus, config.object_store_mb)
        parts = ray.get([task.remote(paths[i:i + OPEN_FILES], keyword) for i in range(0, len(paths), OPEN_FILES)])
        return [value for part in parts for value in part]
    return read


def ray_opener(config: RunOptions) -> Opener:
    """Discovery's :data:`~galaxy_infer.worklist.Opener` on Ray: shards and FITS headers are read by
    tasks on the workers (any CPU of the cluster), never by the driver. Ray is started for the first
    file to open, if it is not running yet: listing plain files alone never starts it."""
    import ray

    task = ray.remote(num_cpus=1, retry_exceptions=False)(open_files)

    def opener(listed: pa.Table, in_folder: list[bool], fields: ShardFields | None, id_keyword: str | None) -> Pending:
        init_ray(config.address, config.num_cpus, config.object_store_mb)
        return Opening(task, listed, in_folder, (fields, id_keyword))
    return opener


class Opening:
    """One batch of :func:`~galaxy_infer.worklist.open_files` on Ray. When its worker keeps dying, each
    file is opened by a task of its own and a file whose worker still dies becomes one error row
    (the poison-file isolation of :class:`ChunkResults`, at discovery)."""

    def __init__(self, task: Any, listed: pa.Table, in_folder: list[bool], args: tuple) -> None:
        self.task, self.listed, self.in_folder, self.args = task, listed, in_folder, args
        self.ref = task.options(max_retries=TASK_RETRIES).remote(listed, in_folder, *args)

    def done(self) -> bool:
        import ray

        return bool(ray.wait([self.ref], timeout=0)[0])

    def result(self) -> pa.Table:
        import ray

        try:
            return ray.get(self.ref)
        except ray.exceptions.RayError as exc:
            if not worker_died(exc):
                raise
        rows = [self.listed.take([i]) for i in range(self.listed.num_rows)]  # a copy: a slice ships its parent
        alone = [self.task.options(max_retries=SPLIT_RETRIES).remote(row, [folder], *self.args)
                 for row, folder in zip(rows, self.in_folder)]
        tables = []
        for row, ref in zip(rows, alone):
            try:
                tables.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                if not worker_died(exc):
                    raise
                reason = (f"{WORKER_DIED_OPENING}: the worker process opening this file died on every try "
                          "(a crash or out of memory); the other files were classified")
                tables.append(row.set_column(row.schema.get_field_index("error"), "error", pa.array([reason]))
                              .set_column(row.schema.get_field_index("error_kind"), "error_kind",
                                          pa.array([ErrorKind.WORKER_DIED.value])))
        return pa.concat_tables(tables)


def classify(config: RunConfig) -> dict[str, Any]:
    """Run the pipeline and commit the catalog; returns the run summary.

    Discovery runs beside classification (:class:`~galaxy_infer.worklist.Listing`): tasks start
    on the first listed batch with provisional ids; once the listing has ended the id rule runs
    over it out of core, and the few parts holding a row whose id or status it changes are
    amended (:meth:`~galaxy_infer.catalog.PartTarget.amend`) before the commit.
    """
    started = time.perf_counter()
    config.apply_storage()
    info = load_model_info(config.model)
    device = run_device(info, config.device)
    if device == "cuda" and not on_cluster(config.address):
        Predictor(config.model, device="cuda", batch_size=1)
    check_inputs(config.inputs)
    init_ray(config.address, config.num_cpus, config.object_store_mb)
    with scratch_folder() as scratch:
        listing = Listing(config.inputs, os.path.join(scratch, "listed"), config.shard_fields, config.id_keyword,
                          ray_opener(config))
        if listing.first_batch() == 0:
            raise FileNotFoundError(f"no cutouts found in {' '.join(config.inputs)}")
        return _classify_work(config, info, device, listing, scratch, started)


def _classify_work(config: RunConfig, info: ModelInfo, device: str, listing: Listing, scratch: str,
                   started: float) -> dict[str, Any]:
    with CatalogWriter(config.out, file_metadata(info, config.run_id, config.dirichlet_intervals), config.run_id,
                       overwrite=config.overwrite) as writer, ThreadPoolExecutor(1) as id_thread:
        final_ids: Future | None = None
        with Progress(listing.num_rows, config.progress) as progress:
            for record in stream_tables(listing, info, device, config, sink=writer.part_target()):
                writer.add_part(record)
                progress.update(record["rows"], record["rows"] - record["ok"])
                if final_ids is None and listing.finished:
                    progress.set_total(listing.wait())
                    final_ids = id_thread.submit(settle_ids, listing, scratch)
        inputs, collisions, fixes = (final_ids or id_thread.submit(settle_ids, listing, scratch)).result()
        amend_parts(writer, fixes)
        summary = writer.stats.summary(
            inputs=inputs, id_collisions=collisions, run_id=config.run_id,
            model_id=info.model_id, model_path=config.model, device=writer.stats.workers.devices(),
            output=config.out if storage.is_remote(config.out) else str(Path(config.out).resolve()),
            wall_seconds=round(time.perf_counter() - started, 3))
        summary["rows_per_second_wall"] = round(summary["rows"] / summary["wall_seconds"], 1)
        if summary["rows"] != inputs:
            raise RuntimeError(f"pipeline produced {summary['rows']} rows for {inputs} inputs")
        writer.commit(summary)
    return summary


def settle_ids(listing: Listing, scratch: str) -> tuple[int, int, str]:
    """The id rule over the ended listing (header ids were read as it listed): how many inputs, how
    many collide, and the Parquet file of the records it changes (:func:`~galaxy_infer.ids.overrides`)."""
    con = ids.connect(scratch, listing.wait())
    try:
        files = worklist_files(listing.folder)
        inputs = ids.assign(con, files)
        collisions = 0  # counted from the overrides, which name every collision: no pass over all records
        path = os.path.join(scratch, "overrides.parquet")
        with pq.ParquetWriter(path, ids.OVERRIDES_SCHEMA) as out:
            for batch in ids.overrides(con, files):
                collisions += pc.sum(pc.and_(pc.is_valid(batch.column("collision")),
                                             pc.invert(batch.column("dropped")))).as_py() or 0
                out.write_batch(batch)
    finally:
        con.close()
    return inputs, collisions, path


AMENDS_IN_FLIGHT = 8


def amend_part(target: PartTarget, name: str, fixes: pa.Table) -> dict[str, Any]:
    return target.amend(name, fixes)


def amend_parts(writer: CatalogWriter, fixes: str) -> None:
    """Amend each staged part holding a row of ``fixes`` (a Parquet file in listing order), as Ray tasks."""
    import ray

    target = writer.part_target()
    names = sorted(writer.parts, key=target.start_of)
    starts = np.array([target.start_of(name) for name in names], dtype=np.int64)
    amend = ray.remote(amend_part)
    pending: list[ray.ObjectRef] = []

    def submit(part: int, rows: list[pa.RecordBatch]) -> None:
        nonlocal pending
        table = pa.Table.from_batches(rows)
        table = table.append_column("pos", pc.subtract(table.column("seq"), starts[part]))
        pending.append(amend.remote(target, names[part], table))
        while len(pending) >= AMENDS_IN_FLIGHT:
            done, pending = ray.wait(pending, num_returns=1)
            writer.amend_part(ray.get(done[0]))

    current, rows = -1, []
    for batch in pq.ParquetFile(fixes).iter_batches():
        parts = np.searchsorted(starts, batch.column("seq").to_numpy(), side="right") - 1
        for part in np.unique(parts):
            piece = batch.filter(pa.array(parts == part))
            if part != current and rows:
                submit(current, rows)
                rows = []
            current = part
            rows.append(piece)
    if rows:
        submit(current, rows)
    for change in ray.get(pending):
        writer.amend_part(change)
