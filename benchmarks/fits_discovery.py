"""``python -m benchmarks.fits_discovery [--files 2000] [--latency-ms 0 20]``: discovering FITS cutouts on
object storage, their headers read by the driver (as before issue 25) or by Ray tasks on the workers.

A FITS file may hold several images, so discovery reads each one's header blocks (and, with
``--id-keyword``, its id). The files are synthetic 64-pixel single-image cutouts uploaded to
SeaweedFS on loopback (:mod:`tests.s3_server`), each open delayed by ``--latency-ms`` as a distant
store's GET would be (:func:`benchmarks.object_store.add_open_latency`, in the driver and in every
worker). Each case lists the prefix into a work list with ``--id-keyword OBJID``: ``driver`` with
:func:`~galaxy_infer.worklist.open_here`, ``workers`` with :func:`~galaxy_infer.pipeline.ray_opener` on
a local Ray of ``--num-cpus``. Prints the wall time, the driver's CPU seconds (all its threads) and
files per second, and a JSON line.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.object_store import BUCKET, LATENCY_ENV, add_open_latency, seaweedfs
from galaxy_infer import storage


def fits_bytes(i: int) -> bytes:
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.random.default_rng(i).normal(size=(64, 64)).astype(np.float32))
    hdu.header["OBJID"] = f"BENCH{i:07d}"
    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue()


def discover_once(prefix: str, workers: bool, num_cpus: int, latency: float) -> dict:
    import ray

    from galaxy_infer.cluster import local_ray_guard
    from galaxy_infer.pipeline import RunConfig, ray_opener
    from galaxy_infer.worklist import open_here, write_worklist

    runtime_env = {"env_vars": {LATENCY_ENV: str(latency)}, "worker_process_setup_hook": add_open_latency}
    with local_ray_guard():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env=runtime_env)
    try:
        ray.get([ray.remote(lambda: None).remote() for _ in range(num_cpus)])  # workers up before the clock starts
        opener = ray_opener(RunConfig(inputs=[prefix], out="")) if workers else open_here
        with tempfile.TemporaryDirectory() as folder:
            cpu, started = _cpu_seconds(), time.perf_counter()
            rows = write_worklist([prefix], folder, id_keyword="OBJID", opener=opener)
            seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
            named = pq.read_table(folder, columns=["given_id"]).column("given_id").null_count
    finally:
        ray.shutdown()
    return {"files": rows, "header_ids_missing": named, "seconds": round(seconds, 2),
            "files_per_second": round(rows / seconds), "driver_cpu_seconds": round(cpu, 2)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0, 20])
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fits-discovery-") as workdir, seaweedfs(Path(workdir)) as fs:
        for i in range(args.files):
            with fs.open_output_stream(f"{BUCKET}/fits/c{i:07d}.fits", compression=None) as f:
                f.write(fits_bytes(i))
        for latency in args.latency_ms:
            os.environ[LATENCY_ENV] = str(latency / 1000)
            for workers in (False, True):
                resolve = storage.resolve
                if not workers:
                    add_open_latency()  # the driver's own reads wait as the workers' do
                try:
                    result = {"latency_ms": latency, "opened_by": "workers" if workers else "driver",
                              **discover_once(f"s3://{BUCKET}/fits/", workers, args.num_cpus, latency / 1000)}
                finally:
                    storage.resolve = resolve
                results.append(result)
                print(f"+{latency:g} ms per open, headers read by the {result['opened_by']:<7}: "
                      f"{result['files']} files in {result['seconds']} s ({result['files_per_second']} files/s), "
                      f"driver CPU {result['driver_cpu_seconds']} s", flush=True)
    print(json.dumps({"num_cpus": args.num_cpus, "results": results}))


if __name__ == "__main__":
    main()
