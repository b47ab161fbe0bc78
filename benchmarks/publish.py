"""``python -m benchmarks.publish [--parts 2000]``: publishing a catalog of many parts on an object store.

Stages a catalog of ``--parts`` small Parquet parts plus its summary on SeaweedFS on loopback
(started as the tests start it, :mod:`tests.s3_server`), then times
:func:`galaxy_infer.storage.publish_folder` with one copy at a time (how every publish ran before
parts were copied in parallel) and with :data:`~galaxy_infer.storage.PUBLISH_CONCURRENCY` at a
time, each on a fresh output. Prints one line per case and a JSON line of figures. The server runs
on the same cores as this process.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from galaxy_infer import storage
from galaxy_infer.catalog import SUMMARY_NAME

BUCKET = "galaxy-publish-bench"


def stage_catalog(stage: str, parts: int) -> None:
    """``parts`` parts of 100 rows each (about 1 KB) and a summary under ``stage``."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"object_id": [str(i) for i in range(100)], "x": list(range(100))}), buffer)
    data = buffer.getvalue()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda i: storage.write_bytes(storage.join(stage, f"part-{i * 100:012d}.parquet"), data),
                      range(parts)))
    storage.write_bytes(storage.join(stage, SUMMARY_NAME), b"{}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=2000)
    args = parser.parse_args()
    from tests import s3_server

    server = s3_server.start(Path(tempfile.mkdtemp(prefix="seaweedfs-publish-")))
    try:
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        pafs.S3FileSystem(access_key=s3_server.ACCESS_KEY, secret_key=s3_server.SECRET_KEY,
                          endpoint_override=server.endpoint, scheme="http",
                          allow_bucket_creation=True).create_dir(BUCKET)
        figures: dict[str, float | int] = {"parts": args.parts}
        for label, concurrency in (("sequential", 1), ("parallel", storage.PUBLISH_CONCURRENCY)):
            out = f"s3://{BUCKET}/{label}"
            stage = storage.join(f"s3://{BUCKET}", f".{label}.tmp-bench")
            stage_catalog(stage, args.parts)
            started = time.perf_counter()
            storage.publish_folder(stage, out, SUMMARY_NAME, replace=False, concurrency=concurrency)
            seconds = time.perf_counter() - started
            published = len(storage.list_uris(out))
            assert published == args.parts + 1, published
            figures[f"{label}_seconds"] = round(seconds, 2)
            print(f"publish of {args.parts} parts, {concurrency:>2} copies at a time: {seconds:6.2f} s "
                  f"({args.parts / seconds:,.0f} parts/s)")
        figures["speedup"] = round(figures["sequential_seconds"] / figures["parallel_seconds"], 1)
        print(json.dumps(figures))
    finally:
        s3_server.stop(server)


if __name__ == "__main__":
    main()
