"""``python -m benchmarks.driver [--rows 200000]``: what the driver spends per row, and its peak memory.

Classifies a manifest of ``--rows`` rows (one real 64-pixel JPEG named again on every row, each
row with its own object id) with a tiny ONNX model (:mod:`tests.onnx_models`), so prediction costs
almost nothing and the driver's own work shows. ``classify`` runs in a child process on a local
Ray with ``--num-cpus`` CPUs; the child reports its own CPU time (user + system, Ray's worker and
raylet processes excluded) and its peak resident memory (``VmHWM``). ``--code`` runs another
checkout's ``galaxy_infer`` (e.g. ``/work/main``) with the same inputs, for a before/after figure.
With two sizes (the default) it also prints the driver CPU per *added* row, which leaves out the
fixed cost of imports and Ray's start-up. Prints a line per size and a JSON line of figures.
``--ingest`` measures the nightly ingest instead: an inbox of ``--rows`` hard links to the JPEG
(each its own object) ingested into an empty catalog. ``--fits`` classifies a folder of ``--rows``
hard links to one 64-pixel FITS file, whose headers discovery must read (on the workers).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LINKS_PER_FILE = 50_000

CHILD = """
import json, resource, sys, time
from galaxy_infer.pipeline import RunConfig, classify
started = time.perf_counter()
summary = classify(RunConfig(inputs=[sys.argv[1]], out=sys.argv[2], model=sys.argv[3], num_cpus=int(sys.argv[4]),
                             object_store_mb=512, progress=False))
usage = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": summary["rows"], "ok": summary["ok"], "driver_cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "driver_peak_mb": hwm / 1024, "wall_seconds": time.perf_counter() - started}))
"""
INGEST_CHILD = CHILD.replace("from galaxy_infer.pipeline import RunConfig, classify",
                             "from galaxy_infer.ingest import IngestConfig, ingest").replace(
    "classify(RunConfig(inputs=[sys.argv[1]], out=sys.argv[2],",
    "ingest(IngestConfig(inbox=sys.argv[1], catalog=sys.argv[2], settle_seconds=0,")


def write_inputs(folder: Path, rows: int, inbox: bool = False, fits: bool = False) -> tuple[Path, Path]:
    """A 64-pixel JPEG, a manifest naming it ``rows`` times with distinct ids (or an inbox of ``rows``
    hard links to it, or a folder of ``rows`` links to a FITS file), and the tiny model."""
    sys.path.insert(0, str(ROOT))
    from tests.onnx_models import build_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "g.jpg", quality=90)
    if inbox or fits:
        from astropy.io import fits as astropy_fits

        suffix, links = (".fits", folder / "fits") if fits else (".jpg", folder / "inbox")
        astropy_fits.PrimaryHDU(rng.normal(size=(64, 64)).astype(np.float32)).writeto(folder / "g.fits")
        links.mkdir()
        for i in range(rows):
            source = folder / f"g{i // LINKS_PER_FILE}{suffix}"  # a file system allows only so many links per file
            if i % LINKS_PER_FILE == 0:
                shutil.copyfile(folder / f"g{suffix}", source)
            os.link(source, links / f"g{i:08d}{suffix}")
        return links, build_tiny_model(folder / "tiny.onnx")
    manifest = folder / "manifest.csv"
    with open(manifest, "w") as f:
        f.write("path,object_id\n")
        f.writelines(f"g.jpg,obj{i}\n" for i in range(rows))
    return manifest, build_tiny_model(folder / "tiny.onnx")


def run(rows: int, num_cpus: int, code: str, ingest: bool = False, fits: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="driver-bench-") as tmp:
        inputs, model = write_inputs(Path(tmp), rows, ingest, fits)
        env = {**os.environ, "PYTHONPATH": code, "RAY_USAGE_STATS_ENABLED": "0"}
        done = subprocess.run([sys.executable, "-c", INGEST_CHILD if ingest else CHILD, str(inputs), f"{tmp}/catalog",
                               str(model),
                               str(num_cpus)], env=env, cwd=tmp, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    figures["driver_us_per_row"] = round(1e6 * figures["driver_cpu_seconds"] / figures["rows"], 2)
    print(f"{figures['rows']:>9,} rows: driver CPU {figures['driver_cpu_seconds']:.2f} s "
          f"({figures['driver_us_per_row']:.1f} us/row), driver peak memory {figures['driver_peak_mb']:.0f} MB, "
          f"wall {figures['wall_seconds']:.0f} s")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000],
                        help="manifest sizes; with two or more, also the CPU per added row (start-up excluded)")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--code", default=str(ROOT), help="checkout whose galaxy_infer runs (default: this one)")
    parser.add_argument("--ingest", action="store_true", help="measure the nightly ingest of an inbox instead")
    parser.add_argument("--fits", action="store_true", help="classify a folder of FITS files instead of a manifest")
    args = parser.parse_args()
    print(f"galaxy_infer from {args.code}" + (" (nightly ingest)" if args.ingest else " (FITS folder)" if args.fits else ""))
    runs = [run(rows, args.num_cpus, args.code, args.ingest, args.fits) for rows in args.rows]
    result = {"code": args.code, "runs": runs}
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        marginal = (last["driver_cpu_seconds"] - first["driver_cpu_seconds"]) / (last["rows"] - first["rows"])
        result["driver_us_per_added_row"] = round(1e6 * marginal, 2)
        print(f"driver CPU per added row (imports and Ray start-up excluded): {1e6 * marginal:.1f} us")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
