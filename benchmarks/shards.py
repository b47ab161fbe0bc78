"""``make bench`` (shards): the same real cutouts as single JPEG files, as JPEG bytes in Parquet
shards and as uint8 arrays in HDF5 shards (64 and 256 pixel stamps), classified end to end.

For each form: ``galaxy-infer classify`` as a subprocess on the same cores (wall clock from launch
to exit, best of ``--repeats``), the driver process's peak memory (PSS of that one process, sampled
4 times a second; Ray's daemons and workers are not counted), and the time discovery takes in this
process (listing reads shard metadata and id/ra/dec columns only). Prints a table and writes
``bench-shards.json``.

    python -m benchmarks.shards --workdir /tmp/bench --images 100000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.run import SOURCE, PeakMemory, end_to_end, replicate, warm_page_cache
from galaxy_infer.model import bundled_model_path
from galaxy_infer.worklist import discover

SHARD_ROWS = 10_000
ROW_GROUP_ROWS = 1_024


class DriverPeak(PeakMemory):
    """Peak PSS of the driver process alone."""

    def _sample(self) -> int:
        try:
            return self.root.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0


def _sources() -> list[Path]:
    sources = sorted(SOURCE.glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no JPEG cutouts in {SOURCE}: the benchmark needs ../shared/data")
    return sources


def parquet_shards(folder: Path, count: int) -> Path:
    """The Hugging Face layout (``image`` struct of bytes and path, ``id_str``), ``SHARD_ROWS`` per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sources = _sources()
    data = [p.read_bytes() for p in sources]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for start in range(0, count, SHARD_ROWS):
        rows = range(start, min(count, start + SHARD_ROWS))
        table = pa.table({
            "image": pa.array([{"bytes": data[i % len(data)], "path": sources[i % len(data)].name} for i in rows],
                              image_type),
            "id_str": [f"{i:06d}_{sources[i % len(data)].stem}" for i in rows]})
        pq.write_table(table, tmp / f"train-{start // SHARD_ROWS:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
    tmp.rename(folder)
    return folder


def hdf5_shards(folder: Path, count: int, size: int) -> Path:
    """Galaxy10's layout (``images`` N x size x size x 3 uint8), ``SHARD_ROWS`` per file, uncompressed."""
    import h5py
    from PIL import Image

    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stamps = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
                       for p in _sources()])
    for start in range(0, count, SHARD_ROWS):
        n = min(count, start + SHARD_ROWS) - start
        with h5py.File(tmp / f"stamps-{start // SHARD_ROWS:05d}.h5", "w") as h5:
            ds = h5.create_dataset("images", (n, size, size, 3), np.uint8)
            for a in range(0, n, 1_000):
                b = min(n, a + 1_000)
                ds[a:b] = stamps[np.arange(start + a, start + b) % len(stamps)]
    tmp.rename(folder)
    return folder


def classify_run(inputs: Path, out: Path, model: Path, num_cpus: int, extra: list[str]) -> dict:
    """``galaxy-infer classify`` as a subprocess: wall clock, rows, errors and the driver's peak PSS."""
    run = end_to_end(inputs, out, model, num_cpus, extra, sampler=DriverPeak)
    return {**{k: run[k] for k in ("images", "errors", "seconds", "images_per_second", "processing_seconds")},
            "driver_peak_mib": run["peak_memory_mib"]}


def listing_seconds(inputs: Path) -> tuple[float, int]:
    started = time.perf_counter()
    n = len(discover([str(inputs)]))
    return round(time.perf_counter() - started, 2), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-results"))
    parser.add_argument("--images", type=int, default=100_000, help="cutouts in every form (default 100,000)")
    parser.add_argument("--sizes", default="64,256", help="HDF5 stamp sizes in pixels (default 64,256)")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per form; the best counts")
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--extra", default="", help="extra classify options, e.g. '--batch-size 512'")
    args = parser.parse_args()

    n = args.images
    files = replicate(args.workdir / "cutouts", n)
    manifest = args.workdir / f"manifest-{n}.csv"
    manifest.write_text("path\n" + "\n".join(str(f) for f in files) + "\n")
    forms = {"jpeg_files": manifest,
             "parquet_jpeg_bytes": parquet_shards(args.workdir / f"parquet-{n}", n)}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        forms[f"hdf5_uint8_{size}px"] = hdf5_shards(args.workdir / f"hdf5-{size}px-{n}", n, size)
    results: dict = {"images": n, "num_cpus": args.num_cpus, "model": str(args.model), "shard_rows": SHARD_ROWS,
                     "forms": {}}
    for name, inputs in forms.items():
        warm_page_cache(files if name == "jpeg_files" else sorted(inputs.iterdir()))
        listing, listed = listing_seconds(inputs)
        print(f"{name}: listing {listed} cutouts took {listing} s; classify, best of {args.repeats} ...", flush=True)
        runs = [classify_run(inputs, args.workdir / "catalog", args.model, args.num_cpus, args.extra.split())
                for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        results["forms"][name] = {**best, "listing_seconds": listing,
                                  "driver_peak_mib_max": max(r["driver_peak_mib"] for r in runs)}
    (args.workdir / "bench-shards.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nwritten {args.workdir / 'bench-shards.json'}")


def format_table(r: dict) -> str:
    lines = [f"{'input form (' + str(r['images']) + ' cutouts)':<28}{'seconds':>9}{'images/s':>10}{'driver MiB':>12}"
             f"{'listing s':>11}{'errors':>8}", "-" * 78]
    lines += [f"{name:<28}{m['seconds']:>9}{m['images_per_second']:>10}{m['driver_peak_mib']:>12}"
              f"{m['listing_seconds']:>11}{m['errors']:>8}" for name, m in r["forms"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
