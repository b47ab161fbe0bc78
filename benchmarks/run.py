"""``make bench``: the decode ceiling, the pipeline end to end, a naive baseline and peak memory.

Real JPEG cutouts from ``../shared/data/gz1_sdss`` are hard-linked (or copied) under the work
folder until each count is reached; every measurement uses the same files and cores. Prints a
table and writes ``bench.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from galaxy_infer.model import bundled_model_path, load_model_info
from galaxy_infer.preprocess import Recipe, preprocess
from galaxy_infer.readers import read_cutout

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gz1_sdss" / "images"


def replicate(folder: Path, count: int) -> list[Path]:
    """``count`` cutout files under ``folder``, cycling through the real gz1_sdss JPEGs."""
    sources = sorted(SOURCE.glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no JPEG cutouts in {SOURCE}: the benchmark needs ../shared/data")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i // 10000:02d}" / f"{i:06d}_{sources[i % len(sources)].name}"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            try:
                os.link(sources[i % len(sources)], path)
            except OSError:
                shutil.copyfile(sources[i % len(sources)], path)
        paths.append(path)
    return paths


def write_manifest(path: Path, files: list[Path]) -> Path:
    path.write_text("path\n" + "\n".join(str(f) for f in files) + "\n")
    return path


_RECIPE: Recipe | None = None


def _init_worker(recipe: Recipe) -> None:
    global _RECIPE
    _RECIPE = recipe


def _decode_chunk(paths: list[str]) -> int:
    for p in paths:
        preprocess(read_cutout(p, _RECIPE).pixels, _RECIPE)
    return len(paths)


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once: no measurement pays for first reads from disk, whatever the order of runs."""
    for f in set(files):
        f.read_bytes()


def decode_ceiling(files: list[Path], recipe: Recipe, processes: int, repeats: int = 1) -> dict:
    """Decode every file to the model's input size on all cores, nothing else; the best of ``repeats``
    (wall clock, pool start included)."""
    chunks = [[str(f) for f in files[i:i + 256]] for i in range(0, len(files), 256)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with mp.get_context("fork").Pool(processes, initializer=_init_worker, initargs=(recipe,)) as pool:
            done = sum(pool.imap_unordered(_decode_chunk, chunks))
        best = min(best, time.perf_counter() - started)
    return {"images": done, "seconds": round(best, 2), "images_per_second": round(done / best, 1),
            "repeats": repeats}


class PeakMemory:
    """Samples the summed PSS of a process and all its descendants (Ray's daemons and workers included)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for p in procs:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def end_to_end(manifest: Path, out: Path, model: Path, num_cpus: int, extra: list[str],
               measure_memory: bool = False) -> dict:
    """``galaxy-infer classify`` as a user runs it: wall clock from launch to exit and, when asked,
    peak memory of the tree (the sampler reads every process's page map and so slows the run)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "galaxy_infer", "classify", str(manifest), "--out", str(out),
               "--model", str(model), "--num-cpus", str(num_cpus), *extra]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # auth as users run it: a per-run token
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    memory = PeakMemory(proc.pid) if measure_memory else contextlib.nullcontext()
    with memory:
        output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"classify failed ({proc.returncode}):\n{output[-3000:]}")
    summary = json.loads((out / "_run_summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"images": summary["rows"], "seconds": round(seconds, 2),
            "images_per_second": round(summary["rows"] / seconds, 1),
            "processing_seconds": summary["seconds"],
            "startup_and_shutdown_seconds": round(seconds - summary["seconds"], 2),
            **({"peak_memory_mib": round(memory.peak / 2**20)} if measure_memory else {}),
            "stage_seconds": summary["stage_seconds"],
            "errors": summary["errors"]}


def naive_baseline(files: list[Path], recipe: Recipe) -> dict:
    """The original notebooks' way: one process, PIL per file, PyTorch eager on a batch of one."""
    import torch
    from PIL import Image

    from training.models import build_model

    model = build_model("compact", in_channels=recipe.channels).eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for f in files:
            image = Image.open(f).convert("RGB")
            side = min(image.size) * recipe.crop_fraction
            left, top = (image.width - side) / 2, (image.height - side) / 2
            image = image.crop((left, top, left + side, top + side)).resize((recipe.input_size, recipe.input_size))
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            model(x)
    seconds = time.perf_counter() - started
    return {"images": len(files), "seconds": round(seconds, 2), "images_per_second": round(len(files) / seconds, 1),
            "torch_threads": torch.get_num_threads()}


def zoobot_model(spec: str, workdir: Path) -> Path:
    """An ONNX file as given, or a random-weight Zoobot (GZ DESI tree) with the timm encoder ``spec``,
    saved as a Lightning checkpoint and converted by ``import-zoobot`` (weights are not downloadable here;
    the cost per image does not depend on them)."""
    if spec.endswith(".onnx"):
        return Path(spec)
    out = workdir / f"zoobot-{spec}.onnx"
    if out.exists():
        return out
    import lightning as L
    from zoobot.pytorch.estimators.define_model import ZoobotTree
    from zoobot.shared import schemas

    from training.zoobot_import import import_zoobot

    schema = schemas.desi_schema
    model = ZoobotTree(output_dim=len(schema.label_cols), question_answer_pairs=schema.question_answer_pairs,
                       dependencies=schema.dependencies, architecture_name=spec)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    checkpoint = workdir / f"zoobot-{spec}.ckpt"
    trainer.save_checkpoint(checkpoint)
    import_zoobot(checkpoint, out, check_images=[str(SOURCE)], check_limit=4)
    return out


def big_model_comparison(files: list[Path], big: Path, bundled: Path, workdir: Path, num_cpus: int,
                         extra: list[str]) -> dict:
    """A converted Zoobot model next to the bundled one, end to end on the same cutouts (best of 2 each)."""
    manifest = write_manifest(workdir / f"manifest-big-{len(files)}.csv", files)
    out: dict = {"model": str(big), "model_mb": round(big.stat().st_size / 1e6, 1),
                 "runtime": load_model_info(big).runtime}
    for key, model in (("converted", big), ("bundled", bundled)):
        print(f"galaxy-infer classify --model {model} on {len(files)} cutouts, best of 2 ...", flush=True)
        runs = [end_to_end(manifest, workdir / "catalog", model, num_cpus, extra) for _ in range(2)]
        out[key] = min(runs, key=lambda r: r["seconds"])
    out["bundled_over_converted"] = round(out["bundled"]["images_per_second"] / out["converted"]["images_per_second"], 1)
    # short runs are dominated by Ray's start-up: the processing time and the predict stage compare the models
    out["processing_ratio"] = round(out["converted"]["processing_seconds"] / out["bundled"]["processing_seconds"], 1)
    out["predict_ratio"] = round(out["converted"]["stage_seconds"]["predict"] / out["bundled"]["stage_seconds"]["predict"], 1)
    return out


def format_big(r: dict) -> str:
    lines = [f"converted {r['model']} ({r['model_mb']} MB, runtime preference {r['runtime']}) vs the bundled model:"]
    for key in ("converted", "bundled"):
        m = r[key]
        lines.append(f"  {key:<10}{m['images']:>8} images {m['seconds']:>8} s {m['images_per_second']:>9} images/s "
                     f"(processing {m['processing_seconds']} s; stages {m['stage_seconds']})")
    lines.append(f"  the bundled model is {r['bundled_over_converted']}x faster end to end, "
                 f"{r['processing_ratio']}x in processing time, {r['predict_ratio']}x in prediction worker-seconds")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("bench-results"))
    parser.add_argument("--images", type=int, default=60_000, help="cutouts for throughput (default 60,000)")
    parser.add_argument("--memory-counts", default="10000,100000", help="cutout counts for peak memory")
    parser.add_argument("--baseline-images", type=int, default=3_000,
                        help="cutouts for the naive baseline (its rate is steady; default 3,000)")
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--int8-model", default=str(bundled_model_path("int8")),
                        help="also time this (quantized) model end to end; '' skips it")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--extra", default="", help="extra classify options, e.g. '--batch-size 512'")
    parser.add_argument("--big-model", default="",
                        help="also time a converted Zoobot model end to end next to the bundled one: an ONNX "
                             "file, or a timm encoder (e.g. convnext_nano) to build with random weights and convert")
    parser.add_argument("--big-images", type=int, default=2_000, help="cutouts for --big-model (default 2,000)")
    parser.add_argument("--only-big", action="store_true", help="run only the --big-model comparison")
    args = parser.parse_args()
    if args.big_model:
        args.workdir.mkdir(parents=True, exist_ok=True)
        big = zoobot_model(args.big_model, args.workdir)
        files = replicate(args.workdir / "cutouts", args.big_images)
        warm_page_cache(files)
        result = big_model_comparison(files, big, args.model, args.workdir, args.num_cpus, args.extra.split())
        (args.workdir / "bench-big.json").write_text(json.dumps(result, indent=2) + "\n")
        print(format_big(result))
        if args.only_big:
            return

    recipe = load_model_info(args.model).recipe
    counts = [int(c) for c in args.memory_counts.split(",") if c]
    files = replicate(args.workdir / "cutouts", max([args.images, *counts]))
    extra = args.extra.split()
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()},
        "model": str(args.model), "recipe": json.loads(recipe.to_json()), "num_cpus": args.num_cpus,
    }
    sample = files[: args.images]
    warm_page_cache(files)
    print(f"decode ceiling on {len(sample)} cutouts, {args.num_cpus} processes, best of 2 ...", flush=True)
    results["decode_ceiling"] = decode_ceiling(sample, recipe, args.num_cpus, repeats=2)
    manifest = write_manifest(args.workdir / f"manifest-{len(sample)}.csv", sample)
    timed = [("end_to_end", "", args.model)] + ([("end_to_end_int8", "int8_", args.int8_model)] if args.int8_model else [])
    for key, _, model in timed:
        print(f"galaxy-infer classify --model {model} on {len(sample)} cutouts, best of 2 ...", flush=True)
        runs = [end_to_end(manifest, args.workdir / "catalog", model, args.num_cpus, extra) for _ in range(2)]
        results[key] = {**min(runs, key=lambda r: r["seconds"]), "repeats": len(runs)}
    results["memory"] = {}
    for n in counts:
        print(f"peak memory at {n} cutouts ...", flush=True)
        m = write_manifest(args.workdir / f"manifest-{n}.csv", files[:n])
        results["memory"][str(n)] = end_to_end(m, args.workdir / "catalog", args.model, args.num_cpus, extra,
                                               measure_memory=True)
    print(f"naive baseline on {args.baseline_images} cutouts ...", flush=True)
    results["naive_baseline"] = naive_baseline(files[: args.baseline_images], recipe)

    ceiling = results["decode_ceiling"]["images_per_second"]
    naive = results["naive_baseline"]["images_per_second"]
    results["ratios"] = {"end_to_end_over_naive": round(results["end_to_end"]["images_per_second"] / naive, 2)}
    for key, prefix, _ in timed:
        run = results[key]
        results["ratios"][f"{prefix}end_to_end_over_ceiling"] = round(run["images_per_second"] / ceiling, 3)
        # without the fixed start-up and shut-down: the rate a long run approaches
        results["ratios"][f"{prefix}processing_over_ceiling"] = round(
            run["images"] / run["processing_seconds"] / ceiling, 3)
    if len(counts) >= 2:
        lo, hi = results["memory"][str(min(counts))], results["memory"][str(max(counts))]
        results["ratios"]["memory_growth"] = round(hi["peak_memory_mib"] / lo["peak_memory_mib"], 3)
    (args.workdir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nwritten {args.workdir / 'bench.json'}")


def format_table(r: dict) -> str:
    stage = r["end_to_end"]["stage_seconds"]
    total = sum(stage.values()) or 1.0
    rows = [
        ("decode ceiling (all cores, decode only)", r["decode_ceiling"]),
        ("galaxy-infer classify, end to end", r["end_to_end"]),
        *([("galaxy-infer classify --model int8, end to end", r["end_to_end_int8"])] if "end_to_end_int8" in r else []),
        ("naive baseline (PIL + torch eager, batch 1)", r["naive_baseline"]),
    ]
    lines = [f"{'measurement':<46}{'images':>9}{'seconds':>9}{'images/s':>10}", "-" * 74]
    lines += [f"{name:<46}{m['images']:>9}{m['seconds']:>9}{m['images_per_second']:>10}" for name, m in rows]
    lines.append("")
    lines += [f"peak memory at {n:>7} cutouts: {m['peak_memory_mib']:>6} MiB  ({m['images_per_second']} images/s "
              "while sampled)" for n, m in r["memory"].items()]
    lines.append("time split (worker seconds): " + ", ".join(
        f"{k} {v:.1f} s ({v / total:.0%})" for k, v in stage.items()))
    e2e = r["end_to_end"]
    lines.append(f"end to end: {e2e['processing_seconds']} s processing, {e2e['startup_and_shutdown_seconds']} s "
                 f"interpreter, Ray start-up and shut-down; the workers' stage time spread over {r['num_cpus']} "
                 f"cores: {total / r['num_cpus']:.1f} s")
    lines.append("ratios: " + ", ".join(f"{k} {v}" for k, v in r["ratios"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
