"""The batch job: ``ray job submit`` to a real ``ray start --head`` on 127.0.0.1 with token auth, and local runs.

The head gets its own temp dir and explicit free ports (other people run Ray on this machine);
teardown ends exactly the processes started for it, by pid, instead of ``ray stop`` (which
kills every Ray on the host).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from galaxy_infer.catalog import SUMMARY_NAME, read_catalog
from galaxy_infer.synthetic import write_sample
from tests.ray_procs import end_processes, head_command, processes_mentioning, token_file

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.ray


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                            "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PATH=f"{VENV_BIN}:{env.get('PATH', '')}", **extra)
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """``ray start --head`` with token auth and a dashboard (job submission needs it), 2 CPUs, a 256 MB object store."""
    temp_dir = tempfile.mkdtemp(prefix="gi-ray-", dir="/tmp")
    token = token_file(tmp_path_factory.mktemp("token"))
    cmd, ports = head_command(str(VENV_BIN / "ray"), temp_dir, 2, 256 * 1024 * 1024, dashboard=True)
    with_token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    try:
        started = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=job_env(**with_token))
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield {"dashboard": f"http://127.0.0.1:{ports['dashboard']}", "gcs": f"127.0.0.1:{ports['gcs']}",
               "with_token": with_token}
    finally:
        end_processes(processes_mentioning(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(ray_head: dict, args: list[str], env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(ROOT),
           "--", "python", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_ray_job_submit_without_the_token_is_refused(ray_head, tmp_path):
    marker = tmp_path / "ran"
    job = ["-c", f"open({str(marker)!r}, 'w').close()"]
    for env, refusal in ((job_env(RAY_AUTH_MODE="disabled"), "Unauthorized: Missing authentication token"),
                         (job_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64), "Forbidden: Invalid authentication token")):
        done = submit(ray_head, job, env, timeout=120)
        log = done.stdout + done.stderr
        assert done.returncode != 0 and refusal in log, log[-3000:]
    assert not marker.exists()


def test_ray_job_submit_writes_the_complete_catalog(ray_head, tmp_path, tiny_model):
    cutouts = write_sample(tmp_path / "cutouts", 24, seed=11, size=128)
    out = tmp_path / "catalog"
    done = submit(ray_head, ["jobs/classify_catalog.py", "--input", str(tmp_path / "cutouts"), "--output", str(out),
                             "--model", str(tiny_model), "--batch-size", "8", "--num-workers", "2"],
                  job_env(**ray_head["with_token"]))
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "succeeded" in log and f"rows: {len(cutouts)}  ok: {len(cutouts)}  errors: 0" in log, log[-4000:]
    assert "Uploading package" in log or "working_dir" in log or "gcs://" in log
    table = read_catalog(out)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    ids = table.column("object_id").to_pylist()
    print(f"\nray job submit: objects sent {len(cutouts)}, rows {table.num_rows}, duplicates "
          f"{len(ids) - len(set(ids))}, job wall {summary['wall_seconds']} s")
    assert table.num_rows == len(cutouts) == len(set(ids)) == summary["rows"]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert set(ids) == {p.name.split(".")[0] for p in cutouts}
    assert len(set(table.column("run_id").to_pylist())) == 1


def test_local_run_with_a_profile_starts_its_own_ray(tmp_path, tiny_model):
    write_sample(tmp_path / "cutouts", 6, seed=12, size=128)
    (tmp_path / "cutouts" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    profile = tmp_path / "tiny.toml"
    profile.write_text('device = "cpu"\nbatch_size = 4\nobject_store_mb = 256\nmax_error_fraction = 0.5\n')
    cmd = [sys.executable, "jobs/classify_catalog.py", "--input", str(tmp_path / "cutouts"), "--output",
           str(tmp_path / "catalog"), "--model", str(tiny_model), "--profile", str(profile), "--num-cpus", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=job_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rows: 8  ok: 7  errors: 1" in done.stdout
    strict = subprocess.run(cmd[:-4] + ["--output", str(tmp_path / "strict"), "--max-error-fraction", "0.05",
                                        "--num-cpus", "2", "--object-store-mb", "256", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300, env=job_env(), cwd=ROOT)
    assert strict.returncode == 3, strict.stderr[-3000:]


def test_a_missing_input_fails_at_once_with_exit_1_before_starting_ray(tmp_path, tiny_model):
    write_sample(tmp_path / "cutouts", 1, seed=12, size=64)
    cmd = [sys.executable, "jobs/classify_catalog.py", "--input", str(tmp_path / "cutouts"), "--input",
           str(tmp_path / "cutuots"), "--output", str(tmp_path / "catalog"), "--model", str(tiny_model),
           "--profile", "cpu-small"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=job_env(), cwd=ROOT)
    assert done.returncode == 1 and "cutuots does not exist" in done.stderr
    assert not (tmp_path / "catalog").exists() and "Started a local Ray" not in done.stderr


def test_local_runs_start_a_fresh_ray_despite_a_stale_current_cluster_file(tmp_path, tiny_model):
    """A dead head's ``ray_current_cluster`` (left by ``ray start``) must not make local runs try to join it."""
    ray_tmp = tempfile.mkdtemp(prefix="gi-stale-", dir="/tmp")  # Ray's /tmp/ray for these runs only
    try:
        (Path(ray_tmp) / "ray").mkdir()
        (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
        write_sample(tmp_path / "cutouts", 3, seed=13, size=96)
        env = job_env(RAY_TMPDIR=ray_tmp)
        common = ["--model", str(tiny_model), "--num-cpus", "2", "--batch-size", "4"]
        job = subprocess.run([sys.executable, "jobs/classify_catalog.py", "--input", str(tmp_path / "cutouts"),
                              "--output", str(tmp_path / "job"), *common], capture_output=True, text=True,
                             timeout=300, env=env, cwd=ROOT)
        assert job.returncode == 0, job.stderr[-3000:]
        cli = subprocess.run([sys.executable, "-m", "galaxy_infer", "classify", str(tmp_path / "cutouts"), "--out",
                              str(tmp_path / "cli"), *common], capture_output=True, text=True, timeout=300, env=env,
                             cwd=ROOT)
        assert cli.returncode == 0, cli.stderr[-3000:]
        assert "rows: 4  ok: 4  errors: 0" in job.stdout and "rows: 4  ok: 4  errors: 0" in cli.stdout
    finally:
        end_processes(processes_mentioning(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
