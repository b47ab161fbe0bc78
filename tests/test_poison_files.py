"""A file that kills the worker decoding it is isolated: one error row, every other object classified.

The scenario runs in its own Python process (``python tests/test_poison_files.py DIR MODEL``) with
a local Ray whose workers run :func:`exit_on_poison` at start-up: it makes decoding any file named
``poison*`` end the worker process at once (``os._exit``), as a decoder crash or the OOM killer
would. The real pipeline, Ray's retries and the ingest do the rest; only Ray's retries of a whole
chunk are cut from 5 to 1 to keep the test short (each worker death costs seconds here). A second
scenario (``... DIR MODEL staged``) ends the worker right after its task staged its ingest part.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from galaxy_infer.ingest import IngestConfig, ingest, read_ingest_catalog  # noqa: E402
from galaxy_infer.pipeline import RunConfig, classify  # noqa: E402
from tests.ray_procs import run_script, write_night  # noqa: E402

NIGHT = "2026-11-20"
MB = 1024 * 1024


def exit_on_poison() -> None:
    """Worker set-up hook: decoding a ``poison*`` file, or opening a ``poison*`` shard, ends the worker
    process without a word."""
    from galaxy_infer import readers, shards

    real, real_open = readers.decode_cutout, shards.shard_records

    def decode_cutout(data, path, recipe):
        if os.path.basename(path).startswith("poison"):
            os._exit(1)
        return real(data, path, recipe)

    def shard_records(path, *args, **kwargs):
        if os.path.basename(path).startswith("poison"):
            os._exit(1)
        return real_open(path, *args, **kwargs)

    readers.decode_cutout, shards.shard_records = decode_cutout, shard_records


def exit_after_staging_poison() -> None:
    """Worker set-up hook: a task whose chunk holds a ``*poison*`` file stages its part, then its worker ends."""
    from galaxy_infer.catalog import PartTarget

    real = PartTarget.write

    def write(self, table, start):
        record = real(self, table, start)
        if any("poison" in os.path.basename(p) for p in table.column("source_path").to_pylist()):
            os._exit(1)
        return record

    PartTarget.write = write


def scenario(workdir: Path, model: str) -> dict:
    import ray

    from galaxy_infer import pipeline

    pipeline.TASK_RETRIES = 1
    ray.init(address="local", num_cpus=2, object_store_memory=256 * MB, include_dashboard=False, log_to_driver=False,
             configure_logging=False, num_gpus=1, runtime_env={"worker_process_setup_hook": exit_on_poison})
    try:
        sent = write_night(workdir / "inbox", NIGHT, 8, seed=5, size=64)
        (workdir / "inbox" / NIGHT / "poison.jpg").write_bytes(
            (workdir / "inbox" / NIGHT / f"{sent[0]}.jpg").read_bytes())
        config = IngestConfig(inbox=str(workdir / "inbox"), catalog=str(workdir / "catalog"), model=model,
                              date=NIGHT, device="cpu", batch_size=4, task_rows=4, settle_seconds=0, num_workers=2)
        started = time.perf_counter()
        first = ingest(config)
        seconds = time.perf_counter() - started
        again = ingest(IngestConfig(**{**config.__dict__, "run_id": "next-night"}))
        # The GPU layout (decode tasks feeding prediction tasks that hold half a logical GPU), via classify.
        gpu = classify(RunConfig(inputs=[str(workdir / "inbox")], out=str(workdir / "gpu-catalog"), model=model,
                                 device="cpu", num_gpus_per_worker=0.5, task_rows=4, batch_size=4, progress=False))
        # A shard whose opening (a task of the listing) kills the worker.
        (workdir / "opened").mkdir()
        for name in sent[:2]:
            (workdir / "opened" / f"{name}.jpg").write_bytes((workdir / "inbox" / NIGHT / f"{name}.jpg").read_bytes())
        (workdir / "opened" / "poison.h5").write_bytes(b"not read")
        opened = classify(RunConfig(inputs=[str(workdir / "opened")], out=str(workdir / "opened-catalog"),
                                    model=model, device="cpu", task_rows=4, batch_size=4, progress=False))
        return {"objects_sent": len(sent) + 1, "rows": first["rows"], "errors": first["errors"],
                "errors_by_reason": first["errors_by_reason"], "error_examples": first["error_examples"],
                "errors_by_kind": first["errors_by_kind"],
                "seconds": round(seconds, 1),
                "rows_next_night": again["rows"], "gpu_layout_rows": gpu["rows"],
                "gpu_layout_errors": gpu["errors_by_reason"], "opened_rows": opened["rows"],
                "opened_errors": opened["errors_by_reason"]}
    finally:
        ray.shutdown()


def scenario_staged(workdir: Path, model: str) -> dict:
    """The ingest when the worker dies after staging its part: the dead tasks' parts are staged again by
    the pieces of the split, under their first rows' names, and only accepted parts are published."""
    import ray

    from galaxy_infer import pipeline

    pipeline.TASK_RETRIES = 1
    ray.init(address="local", num_cpus=2, object_store_memory=256 * MB, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"worker_process_setup_hook": exit_after_staging_poison})
    try:
        sent = sorted(write_night(workdir / "inbox", NIGHT, 8, seed=6, size=64))
        poison = f"{sent[1]}_poison"  # third in the inbox's order: the middle of the first chunk of 4
        (workdir / "inbox" / NIGHT / f"{poison}.jpg").write_bytes(
            (workdir / "inbox" / NIGHT / f"{sent[0]}.jpg").read_bytes())
        summary = ingest(IngestConfig(inbox=str(workdir / "inbox"), catalog=str(workdir / "catalog"), model=model,
                                      date=NIGHT, device="cpu", batch_size=4, chunk_rows=4, settle_seconds=0,
                                      num_workers=2, progress=False))
        return {"objects_sent": len(sent) + 1, "poison": poison, "rows": summary["rows"],
                "files": len(summary["files"]), "errors_by_kind": summary["errors_by_kind"]}
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_an_ingest_task_that_dies_after_staging_its_part_adds_no_row_twice(tmp_path, tiny_model):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    figures = run_script([__file__, str(tmp_path), str(tiny_model), "staged"], env, 300, "the staged scenario")
    print("\nstaged poison figures:", json.dumps(figures))
    table = read_ingest_catalog(tmp_path / "catalog").to_pandas().set_index("object_id")
    assert len(table) == figures["objects_sent"] == figures["rows"] and table.index.is_unique
    assert table.loc[figures["poison"]].error_kind == "worker-died" and figures["errors_by_kind"] == {"worker-died": 1}
    assert (table.drop(index=figures["poison"]).status == "ok").all()
    assert not list((tmp_path / "catalog" / f"ingest_date={NIGHT}").glob(".*"))  # every staged part was published


@pytest.mark.ray
def test_a_file_that_kills_its_worker_becomes_one_error_row_and_the_rest_is_classified(tmp_path, tiny_model):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    figures = run_script([__file__, str(tmp_path), str(tiny_model)], env, 300, "the poison scenario")
    print("\npoison figures:", json.dumps(figures))
    table = read_ingest_catalog(tmp_path / "catalog").to_pandas().set_index("object_id")
    assert len(table) == figures["objects_sent"] == figures["rows"] and table.index.is_unique
    poison = table.loc["poison"]
    assert poison.status == "error" and poison.error.startswith("worker died while decoding")
    assert poison.error_kind == "worker-died" and figures["errors_by_kind"] == {"worker-died": 1}
    assert (table.drop(index="poison").status == "ok").all()
    assert figures["errors"] == 1 and figures["errors_by_reason"] == {"worker died while decoding": 1}
    assert figures["rows_next_night"] == 0
    assert figures["gpu_layout_rows"] == figures["objects_sent"]
    assert figures["gpu_layout_errors"] == {"worker died while decoding": 1}
    gpu = pd.read_parquet(tmp_path / "gpu-catalog").set_index("object_id")
    assert gpu.loc["poison"].error_kind == "worker-died"
    assert gpu.loc["poison"].status == "error" and (gpu.drop(index="poison").status == "ok").all()
    assert figures["opened_rows"] == 3 and figures["opened_errors"] == {"worker died while opening": 1}
    opened = pd.read_parquet(tmp_path / "opened-catalog").set_index("object_id")
    assert opened.loc["poison"].error_kind == "worker-died" and (opened.drop(index="poison").status == "ok").all()


if __name__ == "__main__":
    run = scenario_staged if sys.argv[3:] == ["staged"] else scenario
    print(json.dumps(run(Path(sys.argv[1]), sys.argv[2])))
