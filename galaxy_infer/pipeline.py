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

import contextlib
import functools
import json
import math
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from galaxy_infer.catalog import STAGE_TIMING_KEY, CatalogWriter, Layout, catalog_table, file_metadata
from galaxy_infer.errors import InputError
from galaxy_infer.model import (ModelInfo, Predictor, bundled_model_path, check_device, load_model_info,
                                resolve_model)
from galaxy_infer.object_ids import COLLISION
from galaxy_infer.postprocess import postprocess
from galaxy_infer.preprocess import Recipe, preprocess
from galaxy_infer import storage
from galaxy_infer.progress import Progress
from galaxy_infer.readers import discover
from galaxy_infer.readers import records_table as to_records_table
from galaxy_infer.shards import ShardFields, read_units
from galaxy_infer.workers import WORKER_KEY

ID_COLUMNS = ("object_id", "source_path", "ra", "dec")
STAGE_SECONDS_KEY = "read_preprocess_seconds"
DEFAULT_MAX_ERROR_FRACTION = 0.1
LOCAL_OBJECT_STORE_BYTES = 1 << 30
TASK_RETRIES = 5
SPLIT_RETRIES = 1
"""Retries of a single file cut out of a chunk whose worker kept dying (larger pieces are split again at once)."""
WORKER_DIED = "worker died while decoding"
NON_FINITE = "model output is not finite"
DEFAULT_BATCH_SIZE = 256
DEFAULT_TASK_ROWS = 1024
TASK_PIXEL_BYTES = 64 << 20
"""Model inputs one task holds at most by default: 1,024 cutouts of a 64-pixel model (48 MiB), 108 of a
224-pixel one, so that a worker's memory does not grow with the model's input size."""


def run_sizes(info: ModelInfo, config: RunConfig) -> tuple[int, int]:
    """Batch size and task rows: the user's, else the model's preference, else the defaults (tasks
    bounded by :data:`TASK_PIXEL_BYTES`); a batch never exceeds a task, so padding stays small."""
    image_bytes = 4 * info.recipe.channels * info.recipe.input_size ** 2
    rows = config.task_rows or info.runtime.get("task_rows") or max(1, min(DEFAULT_TASK_ROWS, TASK_PIXEL_BYTES // image_bytes))
    batch = config.batch_size or info.runtime.get("batch_size") or DEFAULT_BATCH_SIZE
    return (batch if config.batch_size else min(batch, rows)), rows
GPU_WAIT_SECONDS = 900.0
"""How long prediction tasks may wait for a node that can run them before the run fails: a GPU
node of a cluster that scales from zero takes minutes to boot and pull its image (AWS g5 with
Ray's GPU image, a GPU node pool on Kubernetes); 15 minutes without one means none is coming."""
CLUSTER_POLL_SECONDS = 1.0


@dataclass
class RunConfig:
    """Everything one classification run needs; the CLI and the Ray jobs fill it from options."""

    inputs: list[str]
    out: str
    model: str = field(default_factory=lambda: str(bundled_model_path()))
    device: str = "auto"
    batch_size: int | None = None
    """Images per onnxruntime call (None: the model's preference, else 256)."""
    num_cpus: int | None = None
    num_workers: int | None = None
    """Chunks predicted at once (default: one per CPU, or one per ``num_gpus_per_worker`` of the GPUs)."""
    num_gpus_per_worker: float | None = None
    """GPUs each prediction task reserves: None means 1 with cuda and 0 with cpu; a value with
    cpu reserves logical GPUs while onnxruntime runs on CPU (GPU scheduling in tests)."""
    task_rows: int | None = None
    """Cutouts per Ray task: large enough that Ray's per-task cost vanishes, small enough to balance
    (None: the model's preference, else as many as fit :data:`TASK_PIXEL_BYTES`, at most 1,024)."""
    address: str | None = None
    gpu_wait_seconds: float = GPU_WAIT_SECONDS
    """Prediction tasks wait this long for a node that can run them (autoscaling) before the run fails."""
    overwrite: bool = False
    id_keyword: str | None = None
    """FITS header keyword holding the object id (see :mod:`galaxy_infer.object_ids`); None: manifest or file name."""
    object_store_mb: int | None = None
    """Object store of the local Ray started when no cluster is given (default: 1 GiB)."""
    run_id: str = field(default_factory=lambda: new_run_id())
    progress: bool | None = None
    """False: no progress; otherwise a bar on a terminal, else a plain line every 30 s (see galaxy_infer.progress)."""
    dirichlet_intervals: bool = False
    """For Dirichlet models, also write each answer's concentration and 90% interval."""
    shard_fields: ShardFields = field(default_factory=ShardFields)
    """Image/id/ra/dec field names for shards whose layout is ambiguous."""

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def read_and_preprocess(batch: dict[str, np.ndarray], recipe: Recipe,
                        filesystem: pafs.FileSystem | None = None) -> dict[str, np.ndarray]:
    """Decode each cutout of a batch (a file, fetched many at once, or a shard row) into a model input;
    failures become reasons.

    ``filesystem`` reads every file through that filesystem instead of the one its URI names.
    """
    n = len(batch["source_path"])
    pixels = np.zeros((n, recipe.channels, recipe.input_size, recipe.input_size), dtype=np.float32)
    errors = np.full(n, "", dtype=object)
    ra = np.asarray(batch["ra"], dtype=np.float64).copy()
    dec = np.asarray(batch["dec"], dtype=np.float64).copy()
    started = time.perf_counter()
    for i, load in read_units(batch, recipe, filesystem):
        try:
            decoded = load()
            preprocess(decoded.image, recipe, out=pixels[i])
        except InputError as exc:
            errors[i] = str(exc)
            continue
        except (MemoryError, RecursionError) as exc:
            errors[i] = f"could not decode: {type(exc).__name__}"
            continue
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a night's run
            errors[i] = f"unexpected {type(exc).__name__} while decoding: {exc}"[:300]
            continue
        if decoded.ra is not None and np.isnan(ra[i]):
            ra[i], dec[i] = decoded.ra, decoded.dec
    return {**{k: batch[k] for k in ("object_id", "source_path")}, "ra": ra, "dec": dec,
            "error": errors, "pixels": pixels, STAGE_SECONDS_KEY: time.perf_counter() - started}


def predict_and_postprocess(decoded: dict[str, np.ndarray], predictor: Predictor, run_id: str,
                            intervals: bool = False) -> pa.Table:
    """Predict the rows that decoded, shape every row for the catalog (the model's tree and flags);
    stage timings ride in the schema metadata."""
    info = predictor.info
    layout = Layout.of(info, intervals)
    errors = [e if e else None for e in decoded["error"]]
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
    table = catalog_table({k: decoded[k] for k in ID_COLUMNS}, errors, predictions, info.model_id, run_id, layout)
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


@functools.cache
def node_kind() -> str:
    """The kind of node this worker process runs on: its autoscaler node type (Ray's
    ``ray.io/node-group`` label, set by the cluster launcher and KubeRay), else its hardware."""
    import ray

    context = ray.get_runtime_context()
    group = context.get_node_labels().get("ray.io/node-group")
    if group:
        return group
    node = next((n for n in ray.nodes() if n["NodeID"] == context.get_node_id()), {})
    gpus = node.get("Resources", {}).get("GPU", 0)
    return f"{gpus:g}-GPU node" if gpus else "CPU node"


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
    for name in ("shard", "shard_layout", "shard_pos", "error"):
        if name in records.column_names:
            batch[name] = records.column(name).to_pylist()
    return batch


def classify_chunk(records: pa.Table, recipe: Recipe, spec: PredictorSpec, run_id: str) -> pa.Table:
    """All four stages in one worker, so pixels never leave the process that decoded them (the CPU path)."""
    predictor = cached_predictor(spec)
    table = predict_and_postprocess(read_and_preprocess(records_batch(records), recipe), predictor, run_id,
                                    spec.intervals)
    return with_worker_record(table, worker_record(predictor, node_kind()))


def decode_chunk(records: pa.Table, recipe: Recipe) -> dict[str, np.ndarray]:
    """Read and preprocess on any CPU of the cluster (the GPU path); the pixels go straight from this
    worker's object store to the prediction task's node, never through the driver."""
    return {**read_and_preprocess(records_batch(records), recipe), "decoded_on": node_kind()}


def predict_chunk(decoded: dict[str, np.ndarray], spec: PredictorSpec, run_id: str) -> pa.Table:
    predictor = cached_predictor(spec)
    table = predict_and_postprocess(decoded, predictor, run_id, spec.intervals)
    return with_worker_record(table, worker_record(predictor, str(decoded["decoded_on"])))


def records_table(inputs: list[str], fields: ShardFields | None = None, id_keyword: str | None = None) -> pa.Table:
    return to_records_table(discover(inputs, fields, id_keyword))


def count_collisions(records: pa.Table) -> int:
    """Records that discovery made error rows because another input has their object id."""
    import pyarrow.compute as pc

    return pc.sum(pc.fill_null(pc.starts_with(records.column("error"), COLLISION), False)).as_py() or 0


def error_rows(records: pa.Table, errors: list[str], info: ModelInfo, run_id: str, layout: Layout) -> pa.Table:
    """Catalog rows with ``status = 'error'`` for records that never reached a worker's result."""
    return catalog_table({k: records.column(k).to_pylist() for k in ID_COLUMNS}, errors, None, info.model_id,
                         run_id, layout)


def on_cluster(address: str | None) -> bool:
    """Whether the job joins an existing cluster (an address or ``RAY_ADDRESS``) rather than a local Ray."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None, num_cpus: int | None, object_store_mb: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a fresh local Ray sized to this job.

    The local Ray is always a new one (``address="local"``): Ray would otherwise join whatever
    ``/tmp/ray/ray_current_cluster`` names, even a dead head's. It listens on loopback only and
    requires a token (see :func:`local_ray_guard`).
    """
    import ray

    if ray.is_initialized():
        return
    if on_cluster(address):
        env = {k: os.environ[k] for k in storage.FORWARDED_ENV if k in os.environ}
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env} if env else None)
        return
    store = object_store_mb * 1024 * 1024 if object_store_mb else LOCAL_OBJECT_STORE_BYTES
    with local_ray_guard():
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=store,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)


@contextlib.contextmanager
def local_ray_guard() -> Iterator[None]:
    """Around starting a local Ray: loopback only, and a token that only this run holds.

    Ray 2.60 binds its GCS, raylet, object manager, workers and agents to every interface unless
    the node IP is loopback, and ``ray.init`` replaces a loopback ``_node_ip_address`` by the
    host's address; its single-machine switch (the default on macOS and Windows) keeps the node
    IP on 127.0.0.1, so we set it while the node starts (its processes get the IP on their command
    line). Ray turns token authentication on for a new local cluster unless ``RAY_AUTH_MODE`` says
    otherwise (an explicit ``disabled`` is respected); without a token it would write one to
    ``~/.ray/auth_token`` with the default umask, so we hand it a fresh random one in the
    environment, which only this user's processes can read and which ends with the run.
    """
    from ray._private import ray_constants

    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    single_machine = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = single_machine


@dataclass(frozen=True)
class WorkerPlan:
    """What each prediction task reserves, and how the work in flight follows the cluster's size.

    On CPU every core runs whole chunks (read to postprocess) with two chunks per prediction slot
    in flight; on GPU there is one prediction slot per ``gpus_per_task`` of the cluster's GPUs,
    and one more chunk in flight per CPU so that decoding on every CPU feeds the GPUs. Both bounds
    are read from the cluster as it is now, so nodes that join are used and memory stays flat.
    """

    gpus_per_task: float
    fixed_slots: int | None = None
    """``num_workers``: prediction slots fixed by the user instead of read from the cluster."""

    @property
    def task_resources(self) -> dict[str, float]:
        return {"num_cpus": 1, "num_gpus": self.gpus_per_task} if self.gpus_per_task else {"num_cpus": 1}

    def slots(self, resources: dict[str, float]) -> int:
        if self.fixed_slots:
            return self.fixed_slots
        if self.gpus_per_task:
            return int(resources.get("GPU", 0) / self.gpus_per_task)
        return max(1, int(resources.get("CPU", 1)))

    def in_flight(self, resources: dict[str, float]) -> int:
        extra = int(resources.get("CPU", 0)) if self.gpus_per_task else 0
        return max(1, 2 * self.slots(resources) + extra)

    def chunk_rows(self, rows: int, task_rows: int, resources: dict[str, float]) -> int:
        """Rows per chunk: ``task_rows``, or fewer so that a small run still spreads over the decoders."""
        decoders = max(1, int(resources.get("CPU", 1)) if self.gpus_per_task else self.slots(resources))
        return max(1, min(task_rows, math.ceil(rows / decoders)))

    def runnable_on(self, nodes: list[dict]) -> bool:
        """Whether some alive node can run a prediction task now."""
        need = self.task_resources
        return any(n["Alive"] and n["Resources"].get("CPU", 0) >= need["num_cpus"]
                   and n["Resources"].get("GPU", 0) >= need.get("num_gpus", 0) for n in nodes)


def plan_workers(device: str, config: RunConfig) -> WorkerPlan:
    """What prediction tasks ask for, whether or not nodes that offer it exist yet (the autoscaler
    starts them when tasks ask). ``cuda`` reserves one GPU per task unless told otherwise; ``auto``
    reserves GPUs when the cluster has some now or ``num_gpus_per_worker`` asks for them."""
    import ray

    gpus = config.num_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0)) else 0.0
    return WorkerPlan(gpus, config.num_workers)


class ClusterWatch:
    """The cluster as the run sees it, read at most once per :data:`CLUSTER_POLL_SECONDS`.

    Fails the run when no alive node could run a prediction task for ``wait_seconds`` in a row
    (a cluster that never gets such a node; a local Ray, which never grows, fails at once).
    """

    def __init__(self, plan: WorkerPlan, wait_seconds: float, can_grow: bool) -> None:
        self.plan = plan
        self.wait_seconds = wait_seconds if can_grow else 0.0
        self.can_grow = can_grow
        self.missing_since: float | None = None
        self._read_at = -math.inf
        self._resources: dict[str, float] = {}
        self.check()

    def resources(self) -> dict[str, float]:
        import ray

        if time.monotonic() - self._read_at >= CLUSTER_POLL_SECONDS:
            self._resources, self._read_at = ray.cluster_resources(), time.monotonic()
        return self._resources

    def in_flight(self) -> int:
        return self.plan.in_flight(self.resources())

    def check(self) -> None:
        import ray

        if self.plan.runnable_on(ray.nodes()):
            self.missing_since = None
            return
        now = time.monotonic()
        self.missing_since = self.missing_since or now
        if now - self.missing_since >= self.wait_seconds:
            need = ", ".join(f"{v:g} {k.removeprefix('num_')[:-1].upper()}" for k, v in self.plan.task_resources.items())
            where = (f"for {self.wait_seconds:.0f} s no node of the Ray cluster could run one; check that the "
                     "autoscaler has a worker type offering it (cluster.yaml: gpu_worker, k8s: the gpu group) "
                     "and room to start it (max_workers, quotas), or raise --gpu-wait-seconds"
                     if self.can_grow else "this local Ray has no such resources")
            raise RuntimeError(f"prediction tasks need {need} each, but {where}")


def wait_for_one(pending: list, watch: ClusterWatch) -> tuple[Any, list]:
    """The next finished task, checking while it waits that prediction can still run somewhere."""
    import ray

    while True:
        ready, pending = ray.wait(pending, num_returns=1, timeout=CLUSTER_POLL_SECONDS)
        if ready:
            return ready[0], pending
        watch.check()


def stream_tables(table: pa.Table, info: ModelInfo, device: str, config: RunConfig,
                  on_progress: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Classify ``table``'s records in chunks on Ray and yield one catalog table per chunk as it finishes.

    ``device`` is as asked (``auto``, ``cpu``, ``cuda``); each prediction worker resolves it. The
    number of chunks in flight follows the cluster's current size (see :class:`WorkerPlan`), so
    memory stays flat however many inputs there are. A chunk whose worker dies (process killed,
    node lost) is retried by Ray, then split down to the file that kills it (:class:`ChunkResults`);
    every record is yielded exactly once.
    """
    import ray

    plan = plan_workers(device, config)
    watch = ClusterWatch(plan, config.gpu_wait_seconds, can_grow=on_cluster(config.address))
    batch_size, task_rows = run_sizes(info, config)
    rows = plan.chunk_rows(table.num_rows, task_rows, watch.resources())
    spec = PredictorSpec(info.model_id, config.model, device, batch_size, 2 if plan.gpus_per_task else 1,
                         ray.put(Path(config.model).read_bytes()), config.dirichlet_intervals)
    if plan.gpus_per_task:
        decode, predict = ray.remote(decode_chunk), ray.remote(predict_chunk)

        def submit(chunk: pa.Table, retries: int) -> ray.ObjectRef:
            retry = {"max_retries": retries, "retry_exceptions": False}
            decoded = decode.options(num_cpus=1, **retry).remote(chunk, info.recipe)
            return predict.options(**plan.task_resources, **retry).remote(decoded, spec, config.run_id)
    else:
        whole = ray.remote(classify_chunk)

        def submit(chunk: pa.Table, retries: int) -> ray.ObjectRef:
            return whole.options(**plan.task_resources, max_retries=retries, retry_exceptions=False).remote(
                chunk, info.recipe, spec, config.run_id)

    pending = ChunkResults(submit, watch, info, config.run_id, Layout.of(info, config.dirichlet_intervals))
    done = 0

    def next_finished() -> pa.Table:
        nonlocal done
        result = pending.next_finished()
        done += result.num_rows
        if on_progress is not None:
            on_progress(done)
        return result

    for start in range(0, table.num_rows, rows):
        while len(pending) >= watch.in_flight():
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
    1,024 with one poison file costs about 6 + 10 + 2 worker deaths. On GPU a chunk is a decode
    task feeding a prediction task; a death in either fails the prediction task's result, and the
    pair is split alike. Exceptions raised inside a task are not caught: per-file problems are
    already error rows, so one is a bug and stops the run. Waiting goes through
    :func:`wait_for_one`, so a cluster that cannot run prediction still fails the run.
    """

    def __init__(self, submit: Callable[[pa.Table, int], Any], watch: ClusterWatch, info: ModelInfo, run_id: str,
                 layout: Layout) -> None:
        self._submit = submit
        self.watch = watch
        self.info, self.run_id, self.layout = info, run_id, layout
        self.chunks: dict[Any, pa.Table] = {}

    def __len__(self) -> int:
        return len(self.chunks)

    def submit(self, chunk: pa.Table, retries: int | None = None) -> None:
        self.chunks[self._submit(chunk, TASK_RETRIES if retries is None else retries)] = chunk

    def next_finished(self) -> pa.Table:
        """The next chunk's catalog rows; a chunk being split yields its pieces as they finish."""
        import ray

        while True:
            ref, _ = wait_for_one(list(self.chunks), self.watch)
            chunk = self.chunks.pop(ref)
            try:
                return ray.get(ref)
            except ray.exceptions.RayError as exc:
                if not worker_died(exc):
                    raise
            if chunk.num_rows == 1:
                reason = (f"{WORKER_DIED}: the worker process reading this file died on every try (a crash or "
                          "out of memory); the other files of its chunk were classified")
                return error_rows(chunk, [reason], self.info, self.run_id, self.layout)
            half = (chunk.num_rows + 1) // 2
            for piece in (chunk.slice(0, half), chunk.slice(half)):
                self.submit(piece, SPLIT_RETRIES if piece.num_rows == 1 else 0)


def worker_died(exc: BaseException) -> bool:
    """Whether a task failed because its worker process died rather than by raising."""
    import ray

    deaths = (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)
    return isinstance(exc, deaths) or isinstance(getattr(exc, "cause", None), deaths)


def classify(config: RunConfig) -> dict[str, Any]:
    """Run the pipeline and commit the catalog; returns the run summary."""
    started = time.perf_counter()
    info = load_model_info(config.model)
    device = check_device(config.device)
    if device == "cuda" and not on_cluster(config.address):
        Predictor(config.model, device="cuda", batch_size=1)
    table = records_table(config.inputs, config.shard_fields, config.id_keyword)
    if table.num_rows == 0:
        raise FileNotFoundError(f"no cutouts found in {' '.join(config.inputs)}")
    init_ray(config.address, config.num_cpus, config.object_store_mb)
    with CatalogWriter(config.out, file_metadata(info, config.run_id, config.dirichlet_intervals), config.run_id,
                       overwrite=config.overwrite) as writer:
        with Progress(table.num_rows, config.progress) as progress:
            for batch in progress.track(stream_tables(table, info, device, config)):
                writer.write(batch)
        summary = writer.stats.summary(
            inputs=table.num_rows, id_collisions=count_collisions(table), run_id=config.run_id,
            model_id=info.model_id, model_path=config.model, device=writer.stats.workers.devices(),
            output=config.out if storage.is_remote(config.out) else str(Path(config.out).resolve()),
            wall_seconds=round(time.perf_counter() - started, 3))
        summary["rows_per_second_wall"] = round(summary["rows"] / summary["wall_seconds"], 1)
        if summary["rows"] != table.num_rows:
            raise RuntimeError(f"pipeline produced {summary['rows']} rows for {table.num_rows} inputs")
        writer.commit(summary)
    return summary
