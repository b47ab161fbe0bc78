"""cluster.yaml against Ray's own launcher schema; the KubeRay RayJob and the job upload rules."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_before_and_after_defaults(cluster_config):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster_config, schema)
    validate_config(prepare_config(copy.deepcopy(cluster_config)))


def test_cluster_has_cpu_head_and_gpu_workers_from_zero(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types)


def test_setup_installs_the_gpu_extra_and_never_both_onnxruntime_wheels(cluster_config):
    setup = "\n".join(cluster_config["setup_commands"])
    assert 'pip install --quiet ".[gpu]"' in setup
    assert ".[cpu" not in setup and "install onnxruntime" not in setup and "onnxruntime-gpu" not in setup


def test_rayjob_manifest_essentials():
    job = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "jobs/classify_catalog.py" in spec["entrypoint"] and "--input" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    (gpu_group,) = cluster["workerGroupSpecs"]
    assert gpu_group["minReplicas"] == 0 and gpu_group["maxReplicas"] >= 1
    worker = gpu_group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["image"] == head["image"]
    assert '".[gpu]"' in (ROOT / "k8s" / "Dockerfile").read_text() or '[gpu]"' in (ROOT / "k8s" / "Dockerfile").read_text()


def test_job_upload_skips_the_virtualenv_and_git():
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    excludes = get_excludes_from_ignore_files(ROOT, include_gitignore=True)
    for skipped in (".venv/bin/python", ".git/HEAD", "runs/x.json"):
        assert any(e(ROOT / skipped) for e in excludes), skipped
    for kept in ("jobs/classify_catalog.py", "galaxy_infer/pipeline.py"):
        assert not any(e(ROOT / kept) for e in excludes), kept


def test_hardware_profiles_load_and_command_line_wins():
    import importlib.util

    spec = importlib.util.spec_from_file_location("classify_catalog", ROOT / "jobs" / "classify_catalog.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    for path in sorted((ROOT / "jobs" / "profiles").glob("*.toml")):
        assert set(job.load_profile(str(path))) <= job.PROFILE_KEYS
    parser = job.build_parser()
    parser.set_defaults(**job.load_profile("h100-shared"))
    args = parser.parse_args(["--input", "x", "--output", "y", "--batch-size", "32"])
    assert (args.batch_size, args.num_gpus_per_worker, args.device) == (32, 0.5, "cuda")
