"""Nobody else gets in: a local run's Ray listens on loopback only and admits only the run's own token.

The run is a separate process (``python tests/test_auth.py DIR MODEL``) that classifies a sample
through :func:`galaxy_infer.pipeline.classify` and then holds its Ray until the test has looked at
it from outside: the listening sockets of every process of that Ray (psutil), the token in the
run's environment and nowhere on disk, and clients that try to join with a wrong token and the right one.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from galaxy_infer.synthetic import write_sample  # noqa: E402
from tests.ray_procs import descendants, end_processes  # noqa: E402

pytestmark = pytest.mark.ray


def hold_a_run(workdir: Path, model: str) -> None:
    from galaxy_infer.pipeline import RunConfig, classify

    write_sample(workdir / "cutouts", 12, seed=41, size=96)
    summary = classify(RunConfig(inputs=[str(workdir / "cutouts")], out=str(workdir / "catalog"), model=model,
                                 device="cpu", batch_size=4, num_cpus=2, task_rows=4))
    print(json.dumps({"rows": summary["rows"]}), flush=True)
    sys.stdin.readline()


def listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == 2 and c.laddr):  # TCP listeners, bound UDP
                    found.append((p.name(), c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def join(gcs: str, token: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # Ray's single-machine switch: otherwise the client turns 127.0.0.1 into the host's address, where nothing listens
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=str(home), RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    code = f"import ray; ray.init(address={gcs!r}, log_to_driver=False); print('joined', ray.cluster_resources()['CPU'])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_a_local_run_listens_on_loopback_only_and_admits_only_its_token(tmp_path, tiny_model):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    run = subprocess.Popen([sys.executable, __file__, str(tmp_path), str(tiny_model)], cwd=ROOT, env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = run.stdout.readline()
        assert line, run.stderr.read()[-4000:]
        assert json.loads(line)["rows"] == 13
        procs = [psutil.Process(run.pid), *descendants(run.pid)]
        names = {p.name() for p in procs}
        sockets = listening(procs)
        print(f"\n{len(procs)} processes of the run, listening: {sorted(sockets)}")
        assert {"gcs_server", "raylet"} <= names
        assert len(sockets) >= 4  # GCS, raylet (node manager, object manager), workers, agents
        assert all(is_loopback(ip) for _, ip, _ in sockets), [s for s in sockets if not is_loopback(s[1])]

        gcs = next(p for p in procs if p.name() == "gcs_server")
        token = gcs.environ()["RAY_AUTH_TOKEN"]  # the driver set it before starting Ray
        gcs_port = next(port for name, _, port in sockets if name == "gcs_server")
        session = next(a.split("=", 1)[1] for a in gcs.cmdline() if a.startswith("--session-dir="))
        on_disk = [f for f in Path(session).rglob("*") if f.is_file() and token.encode() in f.read_bytes()]
        assert not on_disk and not (home / ".ray" / "auth_token").exists()

        refused = join(f"127.0.0.1:{gcs_port}", "0" * 64, home)
        assert refused.returncode != 0 and "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]
        admitted = join(f"127.0.0.1:{gcs_port}", token, home)
        assert admitted.returncode == 0 and "joined 2.0" in admitted.stdout, admitted.stderr[-2000:]
    finally:
        children = descendants(run.pid)
        run.communicate("\n", timeout=120)
        end_processes([c for c in children if c.is_running()])


if __name__ == "__main__":
    hold_a_run(Path(sys.argv[1]), sys.argv[2])
