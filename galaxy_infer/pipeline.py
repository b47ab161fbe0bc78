"""The classification pipeline on Ray Data: read -> preprocess -> predict -> postprocess -> write.

Read and preprocess run as CPU tasks, predict and postprocess in a pool of actors that each hold
one onnxruntime session, and the driver writes the catalog as batches arrive. On CPU the read
task has the same resources as the actor, so Ray fuses them and pixels never leave the process
that decoded them; on GPU the actors take ``num_gpus`` and decoding stays on CPU workers.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from galaxy_infer.catalog import STAGE_TIMING_KEY, CatalogWriter, catalog_table, file_metadata
from galaxy_infer.errors import InputError
from galaxy_infer.model import ModelInfo, Predictor, bundled_model_path, load_model_info, resolve_device
from galaxy_infer.postprocess import postprocess
from galaxy_infer.preprocess import Recipe, preprocess
from galaxy_infer.readers import discover, read_cutout
from galaxy_infer.schema import GZ2

ID_COLUMNS = ("object_id", "source_path", "ra", "dec")
STAGE_SECONDS_COLUMN = "_read_preprocess_seconds"
DEFAULT_MAX_ERROR_FRACTION = 0.1
LOCAL_OBJECT_STORE_BYTES = 1 << 30


@dataclass
class RunConfig:
    """Everything one classification run needs; the CLI and the Ray jobs fill it from options."""

    inputs: list[str]
    out: str
    model: str = field(default_factory=lambda: str(bundled_model_path()))
    device: str = "auto"
    batch_size: int = 256
    num_cpus: int | None = None
    num_actors: int | None = None
    num_gpus_per_actor: float | None = None
    """GPUs each prediction actor reserves: None means 1 with cuda and 0 with cpu; a value with
    cpu reserves logical GPUs while onnxruntime runs on CPU (GPU scheduling in tests)."""
    address: str | None = None
    overwrite: bool = False
    run_id: str = field(default_factory=lambda: new_run_id())
    progress: bool | None = None


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
    seconds = np.full(n, (time.perf_counter() - started) / max(n, 1), dtype=np.float64)
    return {**{k: batch[k] for k in ("object_id", "source_path")}, "ra": ra, "dec": dec,
            "error": errors, "pixels": pixels, STAGE_SECONDS_COLUMN: seconds}


class PredictAndPostprocess:
    """Actor: one onnxruntime session, predicting ok rows and shaping every row for the catalog."""

    def __init__(self, model: str, model_bytes: bytes, device: str, batch_size: int, num_threads: int,
                 run_id: str) -> None:
        self.predictor = Predictor(model, device=device, batch_size=batch_size, num_threads=num_threads,
                                   model_bytes=model_bytes)
        self.run_id = run_id

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        errors = [e if e else None for e in batch["error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        predictions = None
        started = time.perf_counter()
        if ok.any():
            logits = np.zeros((len(errors), GZ2.n_answers), np.float32)
            logits[ok] = self.predictor.predict(batch["pixels"][ok])
            predicted = time.perf_counter()
            predictions = postprocess(logits, self.predictor.info.thresholds)
        else:
            predicted = started
        ids = {k: batch[k] for k in ID_COLUMNS}
        table = catalog_table(ids, errors, predictions, self.predictor.info.model_id, self.run_id)
        timing = {"read_preprocess": float(np.sum(batch[STAGE_SECONDS_COLUMN])), "predict": predicted - started,
                  "postprocess": time.perf_counter() - predicted}
        return table.replace_schema_metadata({STAGE_TIMING_KEY: json.dumps(timing)})


def records_table(inputs: list[str]) -> pa.Table:
    records = discover(inputs)
    return pa.Table.from_pylist(records, schema=pa.schema([
        ("object_id", pa.string()), ("source_path", pa.string()), ("ra", pa.float64()), ("dec", pa.float64())]))


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


def plan_actors(device: str, config: RunConfig) -> tuple[int, dict[str, float]]:
    """How many prediction actors to run and what each one reserves.

    On CPU every core gets an actor (decode and predict share it through fusion); on GPU, one
    actor per ``num_gpus_per_actor`` of the cluster's GPUs.
    """
    import ray

    resources = ray.cluster_resources()
    gpus_per_actor = config.num_gpus_per_actor
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if device == "cuda" else 0.0
    if gpus_per_actor > 0:
        gpus = resources.get("GPU", 0)
        if gpus <= 0 and config.num_actors is None:
            raise RuntimeError(f"actors need {gpus_per_actor} GPU each but the Ray cluster has no GPU resources")
        n = config.num_actors or max(1, int(gpus / gpus_per_actor))
        return n, {"num_cpus": 1, "num_gpus": gpus_per_actor}
    cpus = int(resources.get("CPU", 1))
    return config.num_actors or max(1, cpus), {"num_cpus": 1}


def build_dataset(table: pa.Table, info: ModelInfo, device: str, config: RunConfig):
    """The Ray Data plan; nothing runs until it is iterated."""
    import ray

    n_actors, actor_resources = plan_actors(device, config)
    # A local Ray starts every actor at once; on a cluster the autoscaler adds GPU nodes as needed.
    fixed_pool = not on_cluster(config.address)
    blocks = max(1, math.ceil(table.num_rows / config.batch_size), min(n_actors, table.num_rows))
    n_actors = min(n_actors, blocks)
    block_rows = math.ceil(table.num_rows / blocks) if table.num_rows else 1
    ds = ray.data.from_arrow([table.slice(i, block_rows) for i in range(0, max(table.num_rows, 1), block_rows)])
    ds = ds.map_batches(read_and_preprocess, fn_kwargs={"recipe": info.recipe}, batch_size=config.batch_size,
                        batch_format="numpy", num_cpus=1, udf_modifying_row_count=False)
    return ds.map_batches(
        PredictAndPostprocess,
        fn_constructor_kwargs={"model": config.model, "model_bytes": Path(config.model).read_bytes(),
                               "device": device, "batch_size": config.batch_size,
                               "num_threads": 1 if device == "cpu" else 2, "run_id": config.run_id},
        compute=ray.data.ActorPoolStrategy(min_size=n_actors if fixed_pool else 1, max_size=n_actors),
        batch_size=config.batch_size, batch_format="numpy", udf_modifying_row_count=False,
        **actor_resources)


def classify(config: RunConfig) -> dict[str, Any]:
    """Run the pipeline and commit the catalog; returns the run summary."""
    import ray

    started = time.perf_counter()
    info = load_model_info(config.model)
    device = resolve_device(config.device)
    if device == "cuda" and not on_cluster(config.address):
        Predictor(config.model, device="cuda", batch_size=1)
    table = records_table(config.inputs)
    if table.num_rows == 0:
        raise FileNotFoundError(f"no cutouts found in {' '.join(config.inputs)}")
    init_ray(config.address, config.num_cpus)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty() if config.progress is None else config.progress
    context.enable_operator_progress_bars = context.enable_progress_bars
    with CatalogWriter(config.out, file_metadata(info, config.run_id), config.run_id,
                       overwrite=config.overwrite) as writer:
        for batch in build_dataset(table, info, device, config).iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.write(batch)
        summary = writer.stats.summary(
            inputs=table.num_rows, run_id=config.run_id, model_id=info.model_id, model_path=config.model,
            device=device, output=str(Path(config.out).resolve()),
            wall_seconds=round(time.perf_counter() - started, 3))
        summary["rows_per_second_wall"] = round(summary["rows"] / summary["wall_seconds"], 1)
        if summary["rows"] != table.num_rows:
            raise RuntimeError(f"pipeline produced {summary['rows']} rows for {table.num_rows} inputs")
        writer.commit(summary)
    return summary
