"""Helpers for the cluster tests: free ports, synthetic nights, and ending only our own processes.

The machine is shared, so teardown never uses ``ray stop`` (it kills every Ray on the host by
name); it ends the processes these tests started, by pid.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from galaxy_infer.synthetic import write_sample

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def write_night(inbox: Path, night: str, n: int, seed: int, size: int = 128) -> list[str]:
    """``n`` JPEG cutouts plus one FITS under ``inbox/night/``, named so object ids are unique per night."""
    scratch = inbox.parent / f".scratch-{night}"
    write_sample(scratch, n, seed=seed, size=size)
    folder = inbox / night
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for path in sorted(scratch.iterdir()):
        target = folder / f"n{night.replace('-', '')}_{path.name}"
        shutil.move(str(path), target)
        ids.append(target.name.split(".")[0])
    scratch.rmdir()
    return ids


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Our processes whose command line contains ``text`` (a unique temp dir), plus their children."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["cmdline"] and any(text in part for part in p.info["cmdline"]):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def end_processes(procs: list[psutil.Process], grace: float = 5.0) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def kill_when(proc: subprocess.Popen, predicate, timeout: float = 240, interval: float = 0.05):
    """SIGKILL ``proc`` (a driver) once ``predicate()`` holds, then end the local Ray it started.

    Returns what the predicate gave (None on timeout) and the driver's stderr.
    """
    children: list[psutil.Process] = []
    stderr = ""
    try:
        found = wait_for(predicate, timeout=timeout, interval=interval)
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    end_processes(children)
    return found, stderr or ""


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def token_file(folder: Path) -> Path:
    """A fresh Ray auth token in a file only this user can read, as ``ray get-auth-token --generate`` + chmod 600 gives."""
    path = folder / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def head_command(ray_bin: str, temp_dir: str, num_cpus: int, object_store_bytes: int, dashboard: bool,
                 extra: list[str] = ()) -> tuple[list[str], dict[str, int]]:
    """``ray start --head`` on 127.0.0.1 with its own temp dir and explicit free ports (others run Ray here)."""
    names = ("gcs", "dashboard", "client", "agent_listen", "agent_grpc", "metrics", "env_agent", "node_manager",
             "object_manager")
    ports = dict(zip(names, free_ports(len(names))))
    cmd = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(ports["gcs"]),
           "--num-cpus", str(num_cpus), "--object-store-memory", str(object_store_bytes),
           "--ray-client-server-port", str(ports["client"]),
           "--dashboard-agent-listen-port", str(ports["agent_listen"]),
           "--dashboard-agent-grpc-port", str(ports["agent_grpc"]), "--metrics-export-port", str(ports["metrics"]),
           "--runtime-env-agent-port", str(ports["env_agent"]), "--node-manager-port", str(ports["node_manager"]),
           "--object-manager-port", str(ports["object_manager"]), "--temp-dir", temp_dir, "--disable-usage-stats",
           *extra]
    if dashboard:
        cmd += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                str(ports["dashboard"])]
    else:
        cmd += ["--include-dashboard", "false"]
    return cmd, ports


def run_script(args: list[str], env: dict[str, str], timeout: float, what: str) -> dict:
    """``python *args`` from the repository root in a process of its own (so its Ray never meets
    the session's); on a timeout every process it started is ended. Returns the JSON object its
    last line of output prints."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        children = descendants(proc.pid)
        proc.kill()
        end_processes(children)
        out, err = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout:.0f} s:\n{err[-4000:]}")
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])
