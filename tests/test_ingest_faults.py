"""Fault tolerance through real Ray: a prediction worker killed mid-run, a worker node removed mid-run.

Each scenario runs in its own Python process (``python tests/test_ingest_faults.py SCENARIO DIR
MODEL``) so its Ray (a local one, or a ``ray.cluster_utils.Cluster``) never meets the session's
Ray; it prints one JSON line of figures and the test checks the catalog it wrote.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from galaxy_infer.ingest import IngestConfig, ingest, read_ingest_catalog  # noqa: E402
from tests.ray_procs import descendants, run_script, write_night  # noqa: E402

BUSY_MARKS = ("ray::classify_chunk", "ray::predict_chunk")  # a worker process titles itself by its task
NIGHT = "2026-11-20"
MB = 1024 * 1024


def _busy_workers_under(pid: int) -> list:
    found = []
    for p in descendants(pid):
        try:
            if any(mark in " ".join(p.cmdline()) for mark in BUSY_MARKS):
                found.append(p)
        except Exception:  # noqa: BLE001 - processes come and go
            continue
    return found


def scenario_worker_kill(workdir: Path, model: str) -> dict:
    import ray

    ray.init(num_cpus=2, object_store_memory=256 * MB, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        sent = write_night(workdir / "inbox", NIGHT, 40, seed=5, size=256)
        killed: list[int] = []
        seen: set[int] = set()
        rows_at_kill: list[int] = []

        def on_batch(rows: int) -> None:
            busy = _busy_workers_under(os.getpid())
            seen.update(p.pid for p in busy)
            if not killed and busy:
                busy[0].kill()  # SIGKILL, as a crash or the OOM killer would
                killed.append(busy[0].pid)
                rows_at_kill.append(rows)

        summary = ingest(IngestConfig(inbox=str(workdir / "inbox"), catalog=str(workdir / "catalog"), model=model,
                                      date=NIGHT, device="cpu", batch_size=2, chunk_rows=8, task_rows=4,
                                      settle_seconds=0, num_workers=2), on_batch=on_batch)
        return {"objects_sent": len(sent), "killed_worker_pid": killed[0] if killed else None,
                "rows_before_kill": rows_at_kill[0] if rows_at_kill else None,
                "busy_worker_pids_seen": len(seen), "rows_reported": summary["rows"],
                "seconds": summary["wall_seconds"]}
    finally:
        ray.shutdown()


def scenario_node_loss(workdir: Path, model: str) -> dict:
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 100 * MB, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 1000}})
    try:
        workers = [cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=100 * MB) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        sent = write_night(workdir / "inbox", NIGHT, 40, seed=7, size=256)
        removed: list[dict] = []

        def on_batch(rows: int) -> None:
            if removed:
                return
            for node in list(cluster.worker_nodes):
                raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                busy = _busy_workers_under(raylet)
                if busy:
                    cluster.remove_node(node, allow_graceful=False)
                    removed.append({"rows_before": rows, "busy_workers_on_node": len(busy)})
                    return

        # Half a logical GPU per prediction task: the surviving node can run both at once.
        summary = ingest(IngestConfig(inbox=str(workdir / "inbox"), catalog=str(workdir / "catalog"), model=model,
                                      date=NIGHT, device="cpu", batch_size=2, chunk_rows=8, task_rows=4,
                                      settle_seconds=0, num_workers=2, num_gpus_per_worker=0.5), on_batch=on_batch)
        alive = [n for n in ray.nodes() if n["Alive"]]
        return {"objects_sent": len(sent), "node_removed": bool(removed),
                "rows_before_removal": removed[0]["rows_before"] if removed else None,
                "busy_workers_on_removed_node": removed[0]["busy_workers_on_node"] if removed else 0,
                "nodes_alive_after": len(alive), "gpus_after": sum(n["Resources"].get("GPU", 0) for n in alive),
                "rows_reported": summary["rows"],
                "seconds": summary["wall_seconds"], "workers_started": len(workers)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def run_scenario(name: str, workdir: Path, model: Path, timeout: float = 420) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    figures = run_script([__file__, name, str(workdir), str(model)], env, timeout, name)
    table = read_ingest_catalog(workdir / "catalog")
    ids = table.column("object_id").to_pylist()
    expected = {p.name.split(".")[0] for p in (workdir / "inbox" / NIGHT).iterdir()}
    figures.update(rows_written=table.num_rows, duplicates=len(ids) - len(set(ids)),
                   lost=len(expected - set(ids)))
    print(f"\n{name} figures:", json.dumps(figures))
    return figures


@pytest.mark.ray
def test_worker_killed_mid_chunk_is_retried_and_every_object_lands_once(tmp_path, tiny_model):
    f = run_scenario("worker-kill", tmp_path, tiny_model)
    assert f["killed_worker_pid"] is not None and f["rows_before_kill"] < f["objects_sent"]
    assert f["busy_worker_pids_seen"] >= 2  # a new worker process (or the other one) took the chunk again
    assert f["rows_written"] == f["objects_sent"] == f["rows_reported"]
    assert f["duplicates"] == 0 and f["lost"] == 0


@pytest.mark.ray
def test_worker_node_removed_mid_run_on_a_three_node_cluster_loses_nothing(tmp_path, tiny_model):
    f = run_scenario("node-loss", tmp_path, tiny_model)
    assert f["node_removed"] and f["busy_workers_on_removed_node"] >= 1
    assert f["rows_before_removal"] < f["objects_sent"]
    assert f["nodes_alive_after"] == 2 and f["gpus_after"] == 1
    assert f["rows_written"] == f["objects_sent"] == f["rows_reported"]
    assert f["duplicates"] == 0 and f["lost"] == 0


if __name__ == "__main__":
    scenario, directory, model_path = sys.argv[1:4]
    runner = {"worker-kill": scenario_worker_kill, "node-loss": scenario_node_loss}[scenario]
    started = time.perf_counter()
    result = runner(Path(directory), model_path)
    result["process_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
