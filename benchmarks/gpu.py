"""The CUDA path on a GPU machine: does prediction really run on CUDA, does it give the CPU's
numbers, and how fast is the model alone and ``galaxy-infer classify`` end to end on one GPU.

Run it where ``galaxy-infer[gpu]`` is installed::

    python -m benchmarks.gpu --images 20000

Prints a table and writes ``gpu.json`` under ``--workdir``. Cutouts are the real gz1_sdss JPEGs
(``--source``), hard-linked until ``--images`` is reached, as ``benchmarks.run`` does.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.run import SOURCE, end_to_end, replicate, warm_page_cache, write_manifest
from galaxy_infer.model import Predictor, bundled_model_path, load_model_info
from galaxy_infer.postprocess import postprocess
from galaxy_infer.preprocess import preprocess
from galaxy_infer.readers import read_cutout


def machine() -> dict:
    """The GPU as ``nvidia-smi`` names it, the CPU and onnxruntime's build."""
    import onnxruntime as ort

    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        gpu = f"none ({exc})"
    return {"gpu": gpu, "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
            "onnxruntime_build": ort.get_device(), "available_providers": ort.get_available_providers()}


def decoded(files: list[Path], model: Path) -> np.ndarray:
    """The cutouts as the pipeline feeds them to the model: the one decode and preprocessing."""
    recipe = load_model_info(model).recipe
    return np.stack([preprocess(read_cutout(str(f), recipe).image, recipe) for f in files])


def agreement(images: np.ndarray, model: Path) -> dict:
    """The same images through the CPU and the CUDA session: the largest difference of any catalog
    column (vote fractions, asked proportions, odd-feature probabilities) and the flags that differ."""
    cpu, cuda = Predictor(model, device="cpu"), Predictor(model, device="cuda")
    info = cpu.info
    cols = [postprocess(p.predict(images), info.thresholds, info.tree, info.flags, info.output_kind)
            for p in (cpu, cuda)]
    numeric = [k for k, v in cols[0].items() if v.dtype.kind == "f"]
    flags = [k for k, v in cols[0].items() if v.dtype.kind == "b"]
    return {"images": len(images), "cuda_providers": cuda.providers,
            "max_abs_difference": float(max(np.abs(cols[0][k] - cols[1][k]).max() for k in numeric)),
            "flags_differing": int(sum((cols[0][k] != cols[1][k]).sum() for k in flags))}


def model_alone(images: np.ndarray, model: Path, batch_size: int, seconds: float = 5.0) -> dict:
    """The CUDA session alone on batches already in host memory (as prediction tasks get them):
    images per second over ``seconds`` after one warm-up batch."""
    predictor = Predictor(model, device="cuda", batch_size=batch_size)
    batch = np.resize(images, (batch_size, *images.shape[1:])).astype(np.float32)
    predictor.predict(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict(batch)
        done += batch_size
    elapsed = time.perf_counter() - started
    return {"batch_size": batch_size, "images_per_second": round(done / elapsed)}


def catalogs_agree(cpu: Path, cuda: Path) -> dict:
    """Two catalogs of the same cutouts: rows, and the largest difference of any float column."""
    a = pq.read_table(cpu).sort_by("source_path")
    b = pq.read_table(cuda).sort_by("source_path")
    worst = 0.0
    for c in (f.name for f in a.schema if f.type in ("float", "double") and f.name in b.column_names):
        diff = np.abs(a[c].to_numpy(zero_copy_only=False) - b[c].to_numpy(zero_copy_only=False))
        worst = max(worst, float(np.max(diff, initial=0.0, where=~np.isnan(diff))))  # ra/dec of JPEGs are null
    return {"rows": (a.num_rows, b.num_rows), "max_abs_difference": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-results"))
    parser.add_argument("--source", type=Path, default=SOURCE, help="a folder of JPEG cutouts")
    parser.add_argument("--images", type=int, default=20_000, help="cutouts for the end-to-end runs")
    parser.add_argument("--check-images", type=int, default=512, help="cutouts for the CPU/CUDA comparison")
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--gpu-shares", default="1,0.25",
                        help="--num-gpus-per-worker values to run end to end (0.25: four prediction tasks a GPU)")
    args = parser.parse_args()

    results: dict = {"machine": machine()}
    print(json.dumps(results["machine"]), flush=True)
    files = replicate(args.workdir / "cutouts", args.images, args.source)
    warm_page_cache(files)
    for name in ("default", "int8"):
        model = bundled_model_path(name)
        images = decoded(files[: args.check_images], model)
        results[name] = {"agreement": agreement(images, model),
                         "model_alone": [model_alone(images, model, int(b)) for b in args.batch_sizes.split(",")]}
        print(name, json.dumps(results[name]), flush=True)

    manifest = write_manifest(args.workdir / f"manifest-{len(files)}.csv", files)
    kept = {}
    runs = [("cpu", ["--device", "cpu"])] + [(f"cuda-{s}", ["--device", "cuda", "--num-gpus-per-worker", s])
                                             for s in args.gpu_shares.split(",")]
    for label, extra in runs:
        out = args.workdir / f"catalog-{label}"
        kept[label] = out
        run = end_to_end(manifest, out, bundled_model_path(), args.num_cpus, extra, keep=True)
        summary = json.loads((out / "_run_summary.json").read_text())
        run |= {k: summary[k] for k in ("device", "prediction_workers", "decode_split")}
        results[f"end_to_end_{label}"] = run
        print(label, json.dumps(run), flush=True)
    results["catalogs"] = catalogs_agree(kept["cpu"], kept[runs[1][0]])
    (args.workdir / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results, [label for label, _ in runs]))


def format_table(r: dict, labels: list[str]) -> str:
    lines = [f"{r['machine']['gpu']}; {r['machine']['cpus']} CPUs; onnxruntime {r['machine']['onnxruntime']}",
             f"{'model':<8}{'batch':>7}{'images/s (model alone, CUDA)':>32}"]
    for name in ("default", "int8"):
        for m in r[name]["model_alone"]:
            lines.append(f"{name:<8}{m['batch_size']:>7}{m['images_per_second']:>32,}")
        a = r[name]["agreement"]
        lines.append(f"{name:<8} CPU vs CUDA on {a['images']} cutouts: max |diff| {a['max_abs_difference']:.2e}, "
                     f"{a['flags_differing']} flags differ; providers {a['cuda_providers']}")
    for label in labels:
        e = r[f"end_to_end_{label}"]
        lines.append(f"classify {label:<10}{e['images']:>8} cutouts {e['seconds']:>7} s {e['images_per_second']:>9} images/s "
                     f"(processing {e['processing_seconds']} s; errors {e['errors']}; "
                     f"predicted on {e['device']})")
    c = r["catalogs"]
    lines.append(f"catalogs cpu vs cuda: rows {c['rows']}, max |diff| of any float column {c['max_abs_difference']:.2e}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
