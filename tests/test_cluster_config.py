"""cluster.yaml against Ray's own launcher schema; the KubeRay RayJob, their auth, the job upload rules, the profiles."""
from __future__ import annotations

import copy
import json
import re
import subprocess
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


def locked(lock: str) -> dict[str, str]:
    """Package -> version pinned in ``requirements/<lock>``."""
    text = (ROOT / "requirements" / lock).read_text()
    return {k.lower().replace("_", "-"): v for k, v in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, flags=re.M)}


def test_setup_installs_the_gpu_lock_and_never_both_onnxruntime_wheels(cluster_config):
    setup = "\n".join(cluster_config["setup_commands"])
    assert "pip install --quiet --require-hashes -r requirements/gpu.txt" in setup
    assert "pip install --quiet --no-deps ." in setup
    assert ".[cpu" not in setup and "install onnxruntime" not in setup and "onnxruntime-gpu" not in setup
    gpu = locked("gpu.txt")
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu and "torch" not in gpu


def test_images_run_the_locked_ray(cluster_config):
    """Head, workers and the KubeRay image start from the Ray release the locks pin (no mixed versions)."""
    ray = locked("gpu.txt")["ray"]
    assert locked("cpu.txt")["ray"] == locked("test.txt")["ray"] == ray
    images = [cluster_config["docker"]["head_image"], cluster_config["docker"]["worker_image"],
              (ROOT / "k8s" / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]]
    assert all(image.startswith(f"rayproject/ray:{ray}-py311") for image in images)


def test_locks_hold_what_pyproject_asks_for():
    """A dependency added to pyproject.toml without `make lock` would be missing where the locks install."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = re.compile(r"^[A-Za-z0-9_.\-]+")

    def names(requirements: list[str]) -> set[str]:
        return {name.match(r).group(0).lower().replace("_", "-") for r in requirements}

    extras = project["optional-dependencies"]
    base = names(project["dependencies"])
    assert base | names(extras["cpu"]) <= set(locked("cpu.txt"))
    assert base | names(extras["gpu"]) <= set(locked("gpu.txt"))
    assert base | {n for e in ("cpu", "dev", "train", "zoobot", "lsdb") for n in names(extras[e])} <= set(locked("test.txt"))


def test_locks_agree_on_every_package_they_share():
    cpu, gpu, test = locked("cpu.txt"), locked("gpu.txt"), locked("test.txt")
    assert all(test[name] == version for name, version in cpu.items())
    assert all(test.get(name, version) == version for name, version in gpu.items())


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
    assert "--require-hashes -r /app/requirements/gpu.txt" in (ROOT / "k8s" / "Dockerfile").read_text()


def test_job_upload_skips_the_virtualenv_and_git():
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    excludes = get_excludes_from_ignore_files(ROOT, include_gitignore=True)
    for skipped in (".venv/bin/python", ".git/HEAD", "runs/x.json"):
        assert any(e(ROOT / skipped) for e in excludes), skipped
    for kept in ("jobs/classify_catalog.py", "galaxy_infer/pipeline.py"):
        assert not any(e(ROOT / kept) for e in excludes), kept


def load_job_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("classify_catalog", ROOT / "jobs" / "classify_catalog.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_hardware_profiles_load_and_command_line_wins():
    job = load_job_module()
    for path in sorted((ROOT / "jobs" / "profiles").glob("*.toml")):
        assert set(job.load_profile(str(path))) <= job.PROFILE_KEYS
    parser = job.build_parser()
    parser.set_defaults(**job.load_profile("h100-shared"))
    args = parser.parse_args(["--input", "x", "--output", "y", "--batch-size", "32"])
    assert (args.batch_size, args.num_gpus_per_worker, args.device) == (32, 0.5, "cuda")


def test_every_node_of_the_cluster_runs_with_token_auth_delivered_from_outside_the_repository(cluster_config):
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cluster_config[commands] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), commands
    mounts = cluster_config["file_mounts"]
    token = mounts["~/.ray/auth_token"]
    assert token.startswith("~/") and not (ROOT / token).exists()  # the launcher's machine, not the checkout
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cluster_config["setup_commands"])
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "auth_token" not in tracked


def test_no_shipped_config_opens_an_unauthenticated_or_public_endpoint(cluster_config):
    text = (ROOT / "cluster.yaml").read_text()
    assert "0.0.0.0" not in text and "--dashboard-host" not in text  # Ray's default: 127.0.0.1, via `ray dashboard`
    job = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"} and cluster["rayVersion"] >= "2.52"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1" and head["serviceType"] == "ClusterIP"
    assert job["spec"]["submissionMode"] == "SidecarMode"  # reaches the head's 127.0.0.1 dashboard from inside its pod
    assert "0.0.0.0" not in (ROOT / "k8s" / "rayjob.yaml").read_text()
    for manifest in (ROOT / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            assert doc["kind"] not in ("Service", "Ingress"), manifest
    makefile = (ROOT / "Makefile").read_text()
    assert "RAY_AUTH_MODE" not in makefile


def node_types() -> dict[str, dict[str, float]]:
    """Every node type the shipped clusters and the autoscaling test cluster can start, by its resources."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = {f"cluster.yaml {n}": t["resources"] for n, t in config["available_node_types"].items()}
    job = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
    types["k8s head"] = {"CPU": float(job["headGroupSpec"]["rayStartParams"]["num-cpus"])}
    for group in job["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        types[f"k8s {group['groupName']}"] = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
    from tests.test_autoscaling import GPU_TYPE

    types[f"autoscaling test {GPU_TYPE}"] = {"CPU": 1, "GPU": 1}
    return types


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "jobs" / "profiles").glob("*.toml")))
def test_each_profile_asks_before_gpus_exist_and_fits_a_node_type(profile):
    from galaxy_infer.cluster import GPU_WAIT_SECONDS, plan_workers
    from galaxy_infer.pipeline import RunConfig

    values = load_job_module().load_profile(profile)
    config = RunConfig(inputs=[], out="unused", device=values["device"], batch_size=values["batch_size"],
                       num_workers=values.get("num_workers"), num_gpus_per_worker=values.get("num_gpus_per_worker"))
    assert values["device"] != "auto" or config.num_gpus_per_worker is not None  # the plan must not depend on the cluster
    plan = plan_workers(config.device, config.num_gpus_per_worker, config.num_workers)
    head_only = {"CPU": 8.0}
    assert plan.in_flight(head_only) >= 1  # work is submitted on a CPU head alone, so the autoscaler sees a request
    assert values.get("gpu_wait_seconds", GPU_WAIT_SECONDS) >= 300  # time for a GPU node to boot
    fitting = [name for name, resources in node_types().items()
               if plan.runnable_on([{"Alive": True, "Resources": resources}])]
    if plan.gpus_per_task:
        assert not plan.runnable_on([{"Alive": True, "Resources": head_only}])
        assert {"cluster.yaml gpu_worker", "k8s gpu", "autoscaling test gpu_worker"} <= set(fitting), fitting
        assert config.num_workers is None  # prediction slots follow the GPUs that join
    else:
        assert "cluster.yaml head" in fitting
