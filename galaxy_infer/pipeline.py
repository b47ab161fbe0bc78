"""The classification pipeline on Ray: read -> preprocess -> predict -> postprocess -> write.

The driver cuts the inputs into chunks and keeps a bounded number in flight as Ray tasks. On CPU
one task runs read, preprocess, predict and postprocess for its chunk, so pixels never leave the
process that decoded them; on GPU, decode tasks on CPUs feed prediction tasks that reserve
``num_gpus``. Each worker process builds its onnxruntime session once and keeps it. The driver
writes the catalog as chunks finish.

Plain tasks rather than Ray Data: measured on 2 cores, Ray Data's block conversions between
operators, its executor and its helper actors took about 40% of the CPU this pipeline needs.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from galaxy_infer.catalog import STAGE_TIMING_KEY, CatalogWriter, catalog_table, file_metadata
from galaxy_infer.errors import InputError
from galaxy_infer.model import (ModelInfo, Predictor, bundled_model_path, load_model_info, resolve_device,
                                resolve_model)
from galaxy_infer.object_ids import COLLISION
from galaxy_infer.postprocess import postprocess
from galaxy_infer.preprocess import Recipe, preprocess
from galaxy_infer.readers import discover, read_cutout
from galaxy_infer.schema import GZ2

ID_COLUMNS = ("object_id", "source_path", "ra", "dec")
STAGE_SECONDS_KEY = "read_preprocess_seconds"
DEFAULT_MAX_ERROR_FRACTION = 0.1
LOCAL_OBJECT_STORE_BYTES = 1 << 30
TASK_RETRIES = 5
SPLIT_RETRIES = 1
"""Retries of a single file cut out of a chunk whose worker kept dying (larger pieces are split again at once)."""
WORKER_DIED = "worker died while decoding"
NON_FINITE = "model output is not finite"


@dataclass
class RunConfig:
    """Everything one classification run needs; the CLI and the Ray jobs fill it from options."""

    inputs: list[str]
    out: str
    model: str = field(default_factory=lambda: str(bundled_model_path()))
    device: str = "auto"
    batch_size: int = 256
    num_cpus: int | None = None
    num_workers: int | None = None
    """Chunks predicted at once (default: one per CPU, or one per ``num_gpus_per_worker`` of the GPUs)."""
    num_gpus_per_worker: float | None = None
    """GPUs each prediction task reserves: None means 1 with cuda and 0 with cpu; a value with
    cpu reserves logical GPUs while onnxruntime runs on CPU (GPU scheduling in tests)."""
    task_rows: int = 1024
    """Cutouts per Ray task: large enough that Ray's per-task cost vanishes, small enough to balance."""
    address: str | None = None
    overwrite: bool = False
    id_keyword: str | None = None
    """FITS header keyword holding the object id (see :mod:`galaxy_infer.object_ids`); None: manifest or file name."""
    object_store_mb: int | None = None
    """Object store of the local Ray started when no cluster is given (default: 1 GiB)."""
    run_id: str = field(default_factory=lambda: new_run_id())
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def read_and_preprocess(batch: dict[str, np.ndarray], recipe: Recipe) -> dict[str, np.ndarray]:
    """Decode each file of a batch and turn it into a model input; failures become reasons."""
    n = len(batch["source_path"])
    pixels = np.zeros((n, recipe.channels, recipe.input_size, recipe.input_size), dtype=np.float32)
    errors = np.full(n, "", dtype=object)
    ra = np.asarray(batch["ra"], dtype=np.float64).copy()
    dec = np.asarray(batch["dec"], dtype=np.float64).copy()
    started = time.perf_counter()
    for i, path in enumerate(batch["source_path"]):
        try:
            decoded = read_cutout(str(path), recipe)
            pixels[i] = preprocess(decoded.pixels, recipe)
        except InputError as exc:
            errors[i] = str(exc)
            continue
        except (MemoryError, RecursionError) as exc:
            errors[i] = f"could not decode: {type(exc).__name__}"
            continue
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a night's run
            errors[i] = f"unexpected {type(exc).__name__} while decoding: {exc}"[:300]
            continue
        if np.isnan(ra[i]) and decoded.ra is not None:
            ra[i], dec[i] = decoded.ra, decoded.dec
    return {**{k: batch[k] for k in ("object_id", "source_path")}, "ra": ra, "dec": dec,
            "error": errors, "pixels": pixels, STAGE_SECONDS_KEY: time.perf_counter() - started}


def predict_and_postprocess(decoded: dict[str, np.ndarray], predictor: Predictor, run_id: str) -> pa.Table:
    """Predict the rows that decoded, shape every row for the catalog; stage timings ride in the schema metadata."""
    errors = [e if e else None for e in decoded["error"]]
    ok = np.array([e is None for e in errors], dtype=bool)
    predictions = None
    started = predicted = time.perf_counter()
    if ok.any():
        logits = np.zeros((len(errors), GZ2.n_answers), np.float32)
        logits[ok] = predictor.predict(decoded["pixels"] if ok.all() else decoded["pixels"][ok])
        predicted = time.perf_counter()
        non_finite = ok & ~np.isfinite(logits).all(axis=1)
        logits[non_finite] = 0
        predictions = postprocess(logits, predictor.info.thresholds)
        for column in predictions.values():
            if column.dtype.kind == "f":
                non_finite |= ok & ~np.isfinite(column)
        for i in np.flatnonzero(non_finite):
            errors[i] = f"{NON_FINITE}: the model gave NaN or inf for this input; check the model and the file's pixels"
    table = catalog_table({k: decoded[k] for k in ID_COLUMNS}, errors, predictions, predictor.info.model_id, run_id)
    timing = {"read_preprocess": float(decoded[STAGE_SECONDS_KEY]), "predict": predicted - started,
              "postprocess": time.perf_counter() - predicted}
    return table.replace_schema_metadata({STAGE_TIMING_KEY: json.dumps(timing)})


@dataclass(frozen=True)
class PredictorSpec:
    """What a worker needs to build its onnxruntime session; the model bytes travel once, by reference."""

    model_id: str
    model_path: str
    device: str
    batch_size: int
    num_threads: int
    model_bytes: Any = field(compare=False)
    """ObjectRef of the ONNX file: nested in the spec, Ray passes the reference, not the bytes, to each task."""


_PREDICTOR: dict[PredictorSpec, Predictor] = {}


def cached_predictor(spec: PredictorSpec) -> Predictor:
    """The worker process's session for ``spec``, built on its first task and reused by the next ones."""
    if spec not in _PREDICTOR:
        import ray

        _PREDICTOR.clear()
        _PREDICTOR[spec] = Predictor(spec.model_path, device=spec.device, batch_size=spec.batch_size,
                                     num_threads=spec.num_threads, model_bytes=ray.get(spec.model_bytes))
    return _PREDICTOR[spec]


def records_batch(records: pa.Table) -> dict[str, np.ndarray]:
    return {"object_id": np.asarray(records.column("object_id").to_pylist(), dtype=object),
            "source_path": np.asarray(records.column("source_path").to_pylist(), dtype=object),
            "ra": records.column("ra").to_numpy(zero_copy_only=False),
            "dec": records.column("dec").to_numpy(zero_copy_only=False)}


def classify_chunk(records: pa.Table, recipe: Recipe, spec: PredictorSpec, run_id: str) -> pa.Table:
    """All four stages in one worker, so pixels never leave the process that decoded them (the CPU path)."""
    return predict_and_postprocess(read_and_preprocess(records_batch(records), recipe), cached_predictor(spec), run_id)


def decode_chunk(records: pa.Table, recipe: Recipe) -> dict[str, np.ndarray]:
    """Read and preprocess on a CPU worker (the GPU path); pixels go to the predict task through the object store."""
    return read_and_preprocess(records_batch(records), recipe)


def predict_chunk(decoded: dict[str, np.ndarray], spec: PredictorSpec, run_id: str) -> pa.Table:
    return predict_and_postprocess(decoded, cached_predictor(spec), run_id)


RECORDS_SCHEMA = pa.schema([("object_id", pa.string()), ("source_path", pa.string()), ("ra", pa.float64()),
                            ("dec", pa.float64()), ("error", pa.string())])
"""Inputs of a run; ``error`` is set where the row is an error before any decoding (id collision, bad name)."""


def records_table(inputs: list[str], id_keyword: str | None = None) -> pa.Table:
    return pa.Table.from_pylist(discover(inputs, id_keyword), schema=RECORDS_SCHEMA)


def split_rejected(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Records to classify (without the ``error`` column), and records already known to be errors."""
    import pyarrow.compute as pc

    if "error" not in table.column_names:
        return table, table.schema.empty_table()
    known = pc.is_valid(table.column("error"))
    return table.filter(pc.invert(known)).drop_columns(["error"]), table.filter(known)


def error_rows(records: pa.Table, errors: list[str], model_id: str, run_id: str) -> pa.Table:
    """Catalog rows with ``status = 'error'`` for records that never reached a worker's result."""
    return catalog_table({k: records.column(k).to_pylist() for k in ID_COLUMNS}, errors, None, model_id, run_id)


def on_cluster(address: str | None) -> bool:
    """Whether the job joins an existing cluster (an address or ``RAY_ADDRESS``) rather than a local Ray."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None, num_cpus: int | None, object_store_mb: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray sized to this job."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if on_cluster(address):
        ray.init(address=address, log_to_driver=True)
        return
    store = object_store_mb * 1024 * 1024 if object_store_mb else LOCAL_OBJECT_STORE_BYTES
    ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=store,
             include_dashboard=False, log_to_driver=False, configure_logging=False)


def plan_workers(device: str, config: RunConfig) -> tuple[int, int, dict[str, float]]:
    """How many chunks predict at once, how many may be in flight, and what each prediction task reserves.

    On CPU every core runs whole chunks (read to postprocess) and two chunks per worker are in
    flight; on GPU, one prediction task per ``num_gpus_per_worker`` of the cluster's GPUs, with
    one more chunk in flight per CPU so that decoding on every CPU feeds the GPUs.
    """
    import ray

    resources = ray.cluster_resources()
    gpus_per_worker = config.num_gpus_per_worker
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if device == "cuda" else 0.0
    if gpus_per_worker > 0:
        gpus = resources.get("GPU", 0)
        if gpus <= 0 and config.num_workers is None:
            raise RuntimeError(f"workers need {gpus_per_worker} GPU each but the Ray cluster has no GPU resources")
        n = config.num_workers or max(1, int(gpus / gpus_per_worker))
        return n, 2 * n + int(resources.get("CPU", 0)), {"num_cpus": 1, "num_gpus": gpus_per_worker}
    n = config.num_workers or max(1, int(resources.get("CPU", 1)))
    return n, 2 * n, {"num_cpus": 1}


def stream_tables(table: pa.Table, info: ModelInfo, device: str, config: RunConfig,
                  on_progress: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Classify ``table``'s records in chunks on Ray and yield one catalog table per chunk as it finishes.

    A bounded number of chunks is in flight (see :func:`plan_workers`), so memory stays flat
    however many inputs there are. A chunk whose worker dies (process killed, node lost) is
    retried by Ray; every chunk is yielded exactly once.
    """
    import ray

    n_workers, in_flight, resources = plan_workers(device, config)
    rows = max(1, min(config.task_rows, math.ceil(table.num_rows / n_workers)))
    spec = PredictorSpec(info.model_id, config.model, device, config.batch_size, 1 if device == "cpu" else 2,
                         ray.put(Path(config.model).read_bytes()))
    if resources.get("num_gpus"):
        decode, predict = ray.remote(decode_chunk), ray.remote(predict_chunk)

        def submit(chunk: pa.Table, retries: int) -> ray.ObjectRef:
            retry = {"max_retries": retries, "retry_exceptions": False}
            decoded = decode.options(num_cpus=1, **retry).remote(chunk, info.recipe)
            return predict.options(**resources, **retry).remote(decoded, spec, config.run_id)
    else:
        whole = ray.remote(classify_chunk)

        def submit(chunk: pa.Table, retries: int) -> ray.ObjectRef:
            return whole.options(**resources, max_retries=retries, retry_exceptions=False).remote(
                chunk, info.recipe, spec, config.run_id)

    pending = ChunkResults(submit, info.model_id, config.run_id)
    done = 0

    def next_finished() -> pa.Table:
        nonlocal done
        result = pending.next_finished()
        done += result.num_rows
        if on_progress is not None:
            on_progress(done)
        return result

    for start in range(0, table.num_rows, rows):
        if len(pending) >= in_flight:
            yield next_finished()
        pending.submit(table.slice(start, rows))
    while len(pending):
        yield next_finished()


class ChunkResults:
    """Chunks in flight and their results, with poison files isolated.

    Ray reruns a chunk whose worker process died (``TASK_RETRIES``), which covers crashes and lost
    nodes. When those are spent the chunk is cut in halves, and a half whose worker dies is cut
    again, down to single files (tried ``SPLIT_RETRIES`` more times): a file whose worker still
    dies becomes an ``error`` row and every other file of the chunk is classified. A chunk of
    1,024 with one poison file costs about 6 + 10 + 2 worker deaths. Exceptions raised inside a
    task are not caught: per-file problems are already error rows, so one is a bug and stops the run.
    """

    def __init__(self, submit: Callable[[pa.Table, int], Any], model_id: str, run_id: str) -> None:
        self._submit = submit
        self.model_id, self.run_id = model_id, run_id
        self.chunks: dict[Any, pa.Table] = {}

    def __len__(self) -> int:
        return len(self.chunks)

    def submit(self, chunk: pa.Table, retries: int | None = None) -> None:
        self.chunks[self._submit(chunk, TASK_RETRIES if retries is None else retries)] = chunk

    def next_finished(self) -> pa.Table:
        """The next chunk's catalog rows; a chunk being split yields its pieces as they finish."""
        import ray

        while True:
            [ref], _ = ray.wait(list(self.chunks), num_returns=1)
            chunk = self.chunks.pop(ref)
            try:
                return ray.get(ref)
            except ray.exceptions.RayError as exc:
                if not worker_died(exc):
                    raise
            if chunk.num_rows == 1:
                reason = (f"{WORKER_DIED}: the worker process reading this file died on every try (a crash or "
                          "out of memory); the other files of its chunk were classified")
                return error_rows(chunk, [reason], self.model_id, self.run_id)
            half = (chunk.num_rows + 1) // 2
            for piece in (chunk.slice(0, half), chunk.slice(half)):
                self.submit(piece, SPLIT_RETRIES if piece.num_rows == 1 else 0)


def worker_died(exc: BaseException) -> bool:
    """Whether a task failed because its worker process died rather than by raising."""
    import ray

    deaths = (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)
    return isinstance(exc, deaths) or isinstance(getattr(exc, "cause", None), deaths)


def progress_printer(total: int, enabled: bool | None) -> Callable[[int], None] | None:
    """A one-line progress counter on stderr when it is a terminal (or when asked)."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return None

    def show(done: int) -> None:
        print(f"\rclassified {done:,} / {total:,}", end="\n" if done >= total else "", file=sys.stderr, flush=True)

    return show


def classify(config: RunConfig) -> dict[str, Any]:
    """Run the pipeline and commit the catalog; returns the run summary."""
    started = time.perf_counter()
    info = load_model_info(config.model)
    device = resolve_device(config.device)
    if device == "cuda" and not on_cluster(config.address):
        Predictor(config.model, device="cuda", batch_size=1)
    table = records_table(config.inputs, config.id_keyword)
    if table.num_rows == 0:
        raise FileNotFoundError(f"no cutouts found in {' '.join(config.inputs)}")
    todo, rejected = split_rejected(table)
    collisions = sum(e.startswith(COLLISION) for e in rejected.column("error").to_pylist())
    init_ray(config.address, config.num_cpus, config.object_store_mb)
    with CatalogWriter(config.out, file_metadata(info, config.run_id), config.run_id,
                       overwrite=config.overwrite) as writer:
        if rejected.num_rows:
            writer.write(error_rows(rejected, rejected.column("error").to_pylist(), info.model_id, config.run_id))
        for batch in stream_tables(todo, info, device, config, progress_printer(todo.num_rows, config.progress)):
            writer.write(batch)
        summary = writer.stats.summary(
            inputs=table.num_rows, id_collisions=collisions, run_id=config.run_id, model_id=info.model_id,
            model_path=config.model, device=device, output=str(Path(config.out).resolve()),
            wall_seconds=round(time.perf_counter() - started, 3))
        summary["rows_per_second_wall"] = round(summary["rows"] / summary["wall_seconds"], 1)
        if summary["rows"] != table.num_rows:
            raise RuntimeError(f"pipeline produced {summary['rows']} rows for {table.num_rows} inputs")
        writer.commit(summary)
    return summary
