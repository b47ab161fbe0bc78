"""``make bench``: the machine's limit, the pipeline end to end against it, a naive baseline, peak memory.

Real JPEG cutouts from ``../shared/data/gz1_sdss`` are hard-linked (or copied) under the work
folder until each count is reached; every measurement uses the same files and cores. The limit
(issue 13) is measured in the same run: decoding alone (Pillow draft-mode decode and resize to
the model's input size, nothing else, a process per core), the model alone (onnxruntime, one
thread per core, batches of 256), and their combination 1 / (1/decode rate + 1/model rate), the
rate of a classifier that did nothing else. Prints a table and writes ``bench.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from galaxy_infer.model import bundled_model_path, load_model_info
from galaxy_infer.preprocess import Recipe

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gz1_sdss" / "images"


def replicate(folder: Path, count: int, source: Path = SOURCE) -> list[Path]:
    """``count`` cutout files under ``folder``, cycling through the real JPEGs of ``source`` (gz1_sdss)."""
    sources = sorted(source.glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no JPEG cutouts in {source}: the benchmark needs ../shared/data")
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


def _decode_only(paths: list[str], recipe: Recipe) -> None:
    """The issue's decode loop: open, draft-mode decode, crop-and-resize to the input size; no arrays."""
    from PIL import Image

    size = (recipe.input_size, recipe.input_size)
    for p in paths:
        im = Image.open(p)
        im.draft("RGB", recipe.decode_size(*im.size))
        side = min(im.size) * recipe.crop_fraction
        box = ((im.width - side) / 2, (im.height - side) / 2, (im.width + side) / 2, (im.height + side) / 2)
        im.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=None)


def _model_only(model: str, batches: int, batch_size: int, input_shape: list[int]) -> Callable[[], None]:
    """A session with one thread, already run once (allocation is not timed); returns the timed loop."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((batch_size, *input_shape), np.float32)}
    session.run(None, feed)

    def run() -> None:
        for _ in range(batches):
            session.run(None, feed)

    return run


def _timed_worker(kind: str, args: tuple, start, results) -> None:
    """Set up, wait until every process is ready, then time the work (wall and CPU)."""
    run = _model_only(*args) if kind == "model" else functools.partial(_decode_only, *args)
    start.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    results.put((time.perf_counter() - wall, time.process_time() - cpu))


def all_cores(kind: str, per_process: list[tuple], images: int) -> dict:
    """Run ``kind`` (decode or model) in one process per argument tuple, started together.

    The rate is images over the slowest process's time; ``us_per_image`` is the processes' summed
    time per image (what the pipeline's stage timings report), ``cpu_us_per_image`` their CPU.
    """
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(len(per_process)), ctx.Queue()
    procs = [ctx.Process(target=_timed_worker, args=(kind, a, start, results)) for a in per_process]
    for p in procs:
        p.start()
    times = [results.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(t for t, _ in times)
    return {"images": images, "processes": len(procs), "seconds": round(wall, 2),
            "images_per_second": round(images / wall, 1),
            "us_per_image": round(sum(t for t, _ in times) / images * 1e6, 1),
            "cpu_us_per_image": round(sum(c for _, c in times) / images * 1e6, 1)}


def decode_limit(files: list[Path], recipe: Recipe, processes: int) -> dict:
    """Decoding alone on every core, each process taking an equal share of ``files``."""
    paths = [str(f) for f in files]
    return all_cores("decode", [(paths[i::processes], recipe) for i in range(processes)], len(paths))


def model_limit(model: str | Path, processes: int, batches: int = 40, batch_size: int = 256) -> dict:
    """The model alone on every core: one onnxruntime thread per process, ``batches`` batches each."""
    shape = load_model_info(model).input_shape
    return all_cores("model", [(str(model), batches, batch_size, shape)] * processes, processes * batches * batch_size)


def combined_limit(decode_rate: float, model_rate: float) -> float:
    """A classifier that decodes and predicts on the same cores and does nothing else."""
    return 1.0 / (1.0 / decode_rate + 1.0 / model_rate)


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once: no measurement pays for first reads from disk, whatever the order of runs.
    Hard links share their pages, so each inode is read once."""
    for f in {os.stat(f).st_ino: f for f in files}.values():
        f.read_bytes()


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
               measure_memory: bool = False, sampler: type[PeakMemory] | None = None, keep: bool = False) -> dict:
    """``galaxy-infer classify`` as a user runs it: wall clock from launch to exit and, when asked,
    peak memory of the tree (the sampler reads every process's page map and so slows the run);
    ``sampler`` samples something else (the driver alone, say) and implies ``measure_memory``;
    ``keep`` leaves the catalog in ``out``."""
    measure_memory = measure_memory or sampler is not None
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "galaxy_infer", "classify", str(manifest), "--out", str(out),
               "--model", str(model), "--num-cpus", str(num_cpus), *extra]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # auth as users run it: a per-run token
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    memory = (sampler or PeakMemory)(proc.pid) if measure_memory else contextlib.nullcontext()
    with memory:
        output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"classify failed ({proc.returncode}):\n{output[-3000:]}")
    summary = json.loads((out / "_run_summary.json").read_text())
    if not keep:
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-results"))
    parser.add_argument("--images", type=int, default=240_000, help="cutouts for throughput (default 240,000)")
    parser.add_argument("--memory-counts", default=None,
                        help="cutout counts for peak memory (default: 10,000 and --images)")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per model; the best counts")
    parser.add_argument("--model-batches", type=int, default=40, help="batches of 256 per core for the model limit")
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
    parser.add_argument("--s3", action="store_true",
                        help="also classify the same cutouts from a SeaweedFS S3 server on loopback, with and "
                             "without 50 ms per open, next to local disk")
    parser.add_argument("--s3-images", type=int, default=20_000, help="cutouts for --s3 (default 20,000)")
    parser.add_argument("--s3-repeats", type=int, default=2, help="runs of each --s3 case, the best kept (default 2)")
    parser.add_argument("--only-s3", action="store_true", help="run only the --s3 comparison")
    args = parser.parse_args()
    if args.s3 or args.only_s3:
        object_store_bench(args)
        if args.only_s3:
            return
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
    counts = sorted({int(c) for c in (args.memory_counts or f"{min(10_000, args.images)},{args.images}").split(",") if c})
    files = replicate(args.workdir / "cutouts", max([args.images, *counts]))
    extra = args.extra.split()
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()},
        "model": str(args.model), "recipe": json.loads(recipe.to_json()), "num_cpus": args.num_cpus,
    }
    sample = files[: args.images]
    warm_page_cache(files)
    models = [("", args.model)] + ([("int8_", args.int8_model)] if args.int8_model else [])
    print(f"decoding alone on {len(sample)} cutouts, {args.num_cpus} processes ...", flush=True)
    results["decode_limit"] = decode_limit(sample, recipe, args.num_cpus)
    for prefix, model in models:
        print(f"model {Path(model).name} alone, {args.num_cpus} processes of one thread, batch 256 ...", flush=True)
        results[f"{prefix}model_limit"] = model_limit(model, args.num_cpus, args.model_batches)
    manifest = write_manifest(args.workdir / f"manifest-{len(sample)}.csv", sample)
    for prefix, model in models:
        print(f"galaxy-infer classify --model {model} on {len(sample)} cutouts, best of {args.repeats} ...", flush=True)
        runs = [end_to_end(manifest, args.workdir / "catalog", model, args.num_cpus, extra) for _ in range(args.repeats)]
        results[f"{prefix}end_to_end"] = {**min(runs, key=lambda r: r["seconds"]), "repeats": len(runs)}
    results["memory"] = {}
    for n in counts:
        print(f"peak memory at {n} cutouts ...", flush=True)
        m = write_manifest(args.workdir / f"manifest-{n}.csv", files[:n])
        results["memory"][str(n)] = end_to_end(m, args.workdir / "catalog", args.model, args.num_cpus, extra,
                                               measure_memory=True)
    print(f"naive baseline on {args.baseline_images} cutouts ...", flush=True)
    results["naive_baseline"] = naive_baseline(files[: args.baseline_images], recipe)
    derive(results, [prefix for prefix, _ in models], counts)
    previous = json.loads((args.workdir / "bench.json").read_text()) if (args.workdir / "bench.json").exists() else {}
    if "object_store" in previous:
        results["object_store"] = previous["object_store"]
    (args.workdir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results, [prefix for prefix, _ in models]))
    print(f"\nwritten {args.workdir / 'bench.json'}")


def object_store_bench(args: argparse.Namespace) -> None:
    """The --s3 comparison; its figures go under ``object_store`` in ``bench.json`` (other figures kept)."""
    from benchmarks.object_store import compare, format_comparison

    files = replicate(args.workdir / "cutouts", args.s3_images)
    warm_page_cache(files)
    manifest = write_manifest(args.workdir / f"manifest-{len(files)}.csv", files)
    result = compare(files, args.workdir / "cutouts", manifest, args.workdir, args.model, args.num_cpus,
                     repeats=args.s3_repeats)
    path = args.workdir / "bench.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["object_store"] = result
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(format_comparison(result))
    print(f"\nwritten {path}")


def per_image_us(run: dict) -> dict[str, float]:
    """Each stage's time per cutout in microseconds: worker time for read to postprocess, driver time for write."""
    return {k: round(v / run["images"] * 1e6, 1) for k, v in run["stage_seconds"].items()}


def derive(r: dict, prefixes: list[str], counts: list[int]) -> None:
    """The combined limits, each stage's cost next to its limit, and the ratios the targets are set on."""
    decode = r["decode_limit"]
    r["limits"], r["stages_us_per_image"], r["ratios"] = {}, {}, {
        "end_to_end_over_naive": round(r["end_to_end"]["images_per_second"] / r["naive_baseline"]["images_per_second"], 2)}
    for prefix in prefixes:
        model, run = r[f"{prefix}model_limit"], r[f"{prefix}end_to_end"]
        limit = combined_limit(decode["images_per_second"], model["images_per_second"])
        r["limits"][f"{prefix}combined_images_per_second"] = round(limit, 1)
        stages = r["stages_us_per_image"][f"{prefix or 'float_'}model"] = per_image_us(run)
        r["ratios"][f"{prefix}end_to_end_over_limit"] = round(run["images_per_second"] / limit, 3)
        # without the fixed start-up and shut-down: the rate a long run approaches
        r["ratios"][f"{prefix}processing_over_limit"] = round(run["images"] / run["processing_seconds"] / limit, 3)
        r["ratios"][f"{prefix}read_preprocess_over_decode"] = round(stages["read_preprocess"] / decode["us_per_image"], 3)
        r["ratios"][f"{prefix}predict_over_model"] = round(stages["predict"] / model["us_per_image"], 3)
    if len(counts) >= 2:
        lo, hi = r["memory"][str(min(counts))], r["memory"][str(max(counts))]
        r["ratios"]["memory_growth"] = round(hi["peak_memory_mib"] / lo["peak_memory_mib"], 3)


def format_table(r: dict, prefixes: list[str]) -> str:
    rows = [("decoding alone (all cores)", r["decode_limit"])]
    for prefix in prefixes:
        name = "int8 model" if prefix else "float model"
        rows.append((f"{name} alone (all cores, batch 256)", r[f"{prefix}model_limit"]))
    for prefix in prefixes:
        rows.append((f"galaxy-infer classify{' --model int8' if prefix else ''}, end to end", r[f"{prefix}end_to_end"]))
    rows.append(("naive baseline (PIL + torch eager, batch 1)", r["naive_baseline"]))
    lines = [f"{'measurement':<46}{'images':>9}{'seconds':>9}{'images/s':>10}", "-" * 74]
    lines += [f"{name:<46}{m['images']:>9}{m['seconds']:>9}{m['images_per_second']:>10}" for name, m in rows]
    lines += ["", f"{'per cutout, us of worker time':<46}{'stage':>9}{'limit':>9}{'ratio':>10}", "-" * 74]
    decode = r["decode_limit"]["us_per_image"]
    for prefix in prefixes:
        stages = r["stages_us_per_image"][f"{prefix or 'float_'}model"]
        model = r[f"{prefix}model_limit"]["us_per_image"]
        name = "int8" if prefix else "float"
        for stage, limit in (("read_preprocess", decode), ("predict", model), ("postprocess", None), ("write", None)):
            if stage in stages:
                ratio = f"{stages[stage] / limit:.2f}" if limit else ""
                lines.append(f"{name + ' run: ' + stage:<46}{stages[stage]:>9}{limit or '':>9}{ratio:>10}")
    lines.append("")
    for prefix in prefixes:
        run, limit = r[f"{prefix}end_to_end"], r["limits"][f"{prefix}combined_images_per_second"]
        lines.append(f"{'int8' if prefix else 'float'}: combined limit {limit} images/s; end to end "
                     f"{run['images_per_second']} ({run['seconds']} s: {run['processing_seconds']} s processing, "
                     f"{run['startup_and_shutdown_seconds']} s start-up and shut-down)")
    lines += [f"peak memory at {n:>7} cutouts: {m['peak_memory_mib']:>6} MiB  ({m['images_per_second']} images/s "
              "while sampled)" for n, m in r["memory"].items()]
    lines.append("ratios: " + ", ".join(f"{k} {v}" for k, v in r["ratios"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
