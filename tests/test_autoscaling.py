"""GPU workers from zero: the batch job on Ray's own autoscaling test cluster, and nodes that come and go mid-run.

``LocalAutoscalingCluster`` is ``ray.cluster_utils.AutoscalingCluster`` (a head with CPUs only, a
``gpu_worker`` type with one logical GPU, ``min_workers: 0``, Ray's fake multi-node provider
starting real raylets on this machine), given the base config that Ray's wheel lacks and started
without ``ray stop`` (the machine is shared): its own temp dir, free ports, 127.0.0.1, token auth.
No GPU here: the GPUs are logical and onnxruntime runs on CPU (``--device auto``), so the CUDA
path itself is not exercised; ``--device cuda`` is checked to fail loudly on such a worker.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from ray.cluster_utils import AutoscalingCluster  # noqa: E402

from galaxy_infer.catalog import SUMMARY_NAME, read_catalog  # noqa: E402
from galaxy_infer.synthetic import write_sample  # noqa: E402
from tests.ray_procs import end_processes, head_command, processes_mentioning, run_script, token_file  # noqa: E402

VENV_BIN = Path(sys.executable).parent
MB = 1024 * 1024
GPU_TYPE = "gpu_worker"
BASE_CONFIG = {
    # What fake_multi_node/example.yaml holds in Ray's source tree (absent from the wheel).
    "cluster_name": "galaxy-infer-test", "max_workers": 2,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "docker": {},
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    "head_node_type": "ray.head.default",
}


class LocalAutoscalingCluster(AutoscalingCluster):
    """Ray's autoscaling test cluster with the base config given, started and ended by pid, never ``ray stop``."""

    def __init__(self, workdir: Path, head_resources: dict, worker_node_types: dict, **config) -> None:
        self.workdir = workdir
        self.temp_dir = tempfile.mkdtemp(prefix="gi-as-", dir="/tmp")  # short: Ray's socket paths must fit
        self.token_path = token_file(workdir)
        super().__init__(head_resources, worker_node_types, **config)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = json.loads(json.dumps(BASE_CONFIG))
        config["available_node_types"] = {**worker_node_types, "ray.head.default": {
            "resources": head_resources, "node_config": {}, "max_workers": 0}}
        config.update(config_kwargs)
        return config

    def env(self) -> dict[str, str]:
        """Token auth on every process of the cluster and its clients; loopback node IPs for the fake nodes."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PATH=f"{VENV_BIN}:{env.get('PATH', '')}")
        return env

    def start(self, _system_config=None, override_env=None) -> None:
        head = dict(self._head_resources)
        cmd, ports = head_command(str(VENV_BIN / "ray"), self.temp_dir, head.pop("CPU"),
                                  head.pop("object_store_memory"), dashboard=False)
        self.address = f"127.0.0.1:{ports['gcs']}"
        self._config["provider"]["gcs_address"] = self.address
        config_path = self.workdir / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        env = {**self.env(), "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
        started = subprocess.run([*cmd, f"--autoscaling-config={config_path}"], capture_output=True, text=True,
                                 timeout=240, env=env)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]

    def shutdown(self) -> None:
        end_processes(processes_mentioning(self.temp_dir))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    cluster = LocalAutoscalingCluster(
        tmp_path_factory.mktemp("autoscaling"),
        head_resources={"CPU": 1, "object_store_memory": 150 * MB},
        worker_node_types={GPU_TYPE: {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100 * MB},
                                      "node_config": {}, "min_workers": 0, "max_workers": 2}})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.shutdown()


def run_job(cluster: LocalAutoscalingCluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``jobs/classify_catalog.py`` as ``ray job submit`` runs it: a driver with RAY_ADDRESS set."""
    cmd = [sys.executable, "jobs/classify_catalog.py", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**cluster.env(), "RAY_ADDRESS": cluster.address})


def cluster_nodes(cluster: LocalAutoscalingCluster) -> list[dict]:
    """Alive nodes, asked from a separate client process (this one may hold the session's local Ray)."""
    code = ("import json, ray; ray.init(log_to_driver=False); "
            "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**cluster.env(), "RAY_ADDRESS": cluster.address})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.ray
def test_gpu_workers_scale_from_zero_and_the_batch_job_finishes(autoscaling_cluster, tmp_path, tiny_model):
    before = cluster_nodes(autoscaling_cluster)
    assert len(before) == 1 and not before[0].get("GPU"), before  # a CPU head, no GPU anywhere
    cutouts = write_sample(tmp_path / "cutouts", 40, seed=21, size=96)
    out = tmp_path / "catalog"
    started = time.monotonic()
    done = run_job(autoscaling_cluster, "--input", str(tmp_path / "cutouts"), "--output", str(out),
                   "--model", str(tiny_model), "--profile", "a10g-x1", "--device", "auto", "--batch-size", "8",
                   "--task-rows", "5", "--gpu-wait-seconds", "120")
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    after = cluster_nodes(autoscaling_cluster)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    table = read_catalog(out)
    ids = table.column("object_id").to_pylist()
    print(f"\nautoscaling: nodes before {len(before)}, after {len(after)} (GPUs {sum(n.get('GPU', 0) for n in after)}); "
          f"job {seconds:.1f} s; prediction {json.dumps(summary['prediction_workers'])}; "
          f"decode split {json.dumps(summary['decode_split'])}")
    assert sum(n.get("GPU", 0) for n in after) >= 1
    assert table.num_rows == len(cutouts) == len(set(ids)) == summary["rows"]
    assert set(ids) == {p.name.split(".")[0] for p in cutouts}
    assert set(table.column("status").to_pylist()) == {"ok"}
    (kind,) = summary["prediction_workers"]  # every chunk predicted on the autoscaled GPU type
    assert kind in (GPU_TYPE, "1-GPU node")
    worker = summary["prediction_workers"][kind]
    assert worker["device"] == "cpu" and worker["execution_provider"] == "CPUExecutionProvider"  # logical GPUs
    assert worker["rows"] == len(cutouts) and worker["nodes"] >= 1 and summary["device"] == "cpu"


@pytest.mark.ray
def test_cuda_on_a_gpu_worker_without_cuda_fails_loudly(autoscaling_cluster, tmp_path, tiny_model):
    write_sample(tmp_path / "cutouts", 4, seed=22, size=96)
    done = run_job(autoscaling_cluster, "--input", str(tmp_path / "cutouts"), "--output", str(tmp_path / "catalog"),
                   "--model", str(tiny_model), "--profile", "a10g-x1", "--batch-size", "4", "--gpu-wait-seconds", "120")
    assert done.returncode == 1 and "CUDA was asked for" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "catalog").exists()


@pytest.mark.ray
def test_a_gpu_no_node_type_offers_fails_with_a_clear_message(autoscaling_cluster, tmp_path, tiny_model):
    write_sample(tmp_path / "cutouts", 4, seed=23, size=96)
    started = time.monotonic()
    done = run_job(autoscaling_cluster, "--input", str(tmp_path / "cutouts"), "--output", str(tmp_path / "catalog"),
                   "--model", str(tiny_model), "--device", "auto", "--num-gpus-per-worker", "4",
                   "--gpu-wait-seconds", "3")
    seconds = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-3000:]
    assert "prediction tasks need 1 CPU, 4 GPU each, but for 3 s no node" in done.stderr, done.stderr[-3000:]
    assert seconds < 90 and not (tmp_path / "catalog").exists()


def scenario_node_churn(workdir: Path, model: str) -> dict:
    """A run on a CPU head and one GPU node; a second GPU node joins after the first chunk, the first
    leaves (killed) once the second has predicted. Reports where chunks ran and the in-flight bound over time."""
    import ray
    from ray.cluster_utils import Cluster

    from galaxy_infer.catalog import PartTarget
    from galaxy_infer.model import load_model_info
    from galaxy_infer.cluster import plan_workers
    from galaxy_infer.pipeline import RunConfig, records_table, stream_tables

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 100 * MB, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 1000}})
    try:
        first = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * MB)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        sent = write_sample(workdir / "cutouts", 48, seed=31, size=96)
        config = RunConfig(inputs=[str(workdir / "cutouts")], out=str(workdir / "unused"), model=model, device="auto",
                           batch_size=4, num_gpus_per_worker=1, task_rows=3, address=cluster.address)
        plan = plan_workers("auto", config.num_gpus_per_worker, config.num_workers)
        nodes = {"first": first.node_id}
        in_flight: list[tuple[str, int]] = [("start", plan.in_flight(ray.cluster_resources()))]
        predicted_on: dict[str, int] = {}
        rows = 0
        sink = PartTarget(str(workdir / "stage"), {})
        for record in stream_tables(records_table(config.inputs), load_model_info(model), "auto", config, sink):
            rows += record["rows"]
            node = record["worker"]["node"]
            predicted_on[node] = predicted_on.get(node, 0) + record["rows"]
            if "second" not in nodes:
                nodes["second"] = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * MB).node_id
                cluster.wait_for_nodes()
                time.sleep(1.5)  # the run reads the cluster's size at most once a second
                in_flight.append(("second joined", plan.in_flight(ray.cluster_resources())))
            elif "removed" not in nodes and predicted_on.get(nodes["second"]):
                cluster.remove_node(first, allow_graceful=False)
                nodes["removed"] = first.node_id
                while any(n["NodeID"] == first.node_id and n["Alive"] for n in ray.nodes()):
                    time.sleep(0.2)
                in_flight.append(("first removed", plan.in_flight(ray.cluster_resources())))
        return {"objects_sent": len(sent), "rows": rows, "in_flight": in_flight,
                "rows_on_first": predicted_on.get(nodes["first"], 0),
                "rows_on_second": predicted_on.get(nodes.get("second", ""), 0),
                "first_removed": "removed" in nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
def test_a_node_joins_and_another_leaves_during_a_run(tmp_path, tiny_model):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(24).hex(), RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    f = run_script([__file__, "node-churn", str(tmp_path), str(tiny_model)], env, 300, "node-churn")
    print("\nnode churn figures:", json.dumps(f))
    assert f["rows"] == f["objects_sent"] and f["first_removed"]
    assert f["rows_on_first"] > 0 and f["rows_on_second"] > 0
    assert f["rows_on_first"] + f["rows_on_second"] == f["objects_sent"]
    bound = dict(f["in_flight"])  # chunks in flight follow the cluster: up when a node joins, down when it leaves
    assert bound["second joined"] > bound["start"] and bound["first removed"] < bound["second joined"]


if __name__ == "__main__":
    print(json.dumps({"node-churn": scenario_node_churn}[sys.argv[1]](Path(sys.argv[2]), sys.argv[3])))
