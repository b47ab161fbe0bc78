"""``python -m training`` / ``galaxy-train``: train, evaluate, export and tune from a TOML config."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from training.config import Config, load_config, override


def export_run(config: Config, model, prepared, result: dict[str, Any], fit_info: dict[str, Any] | None,
               path: Path) -> Path:
    """Export the model with thresholds, metrics and data summary from an evaluation."""
    from galaxy_infer.trees import get_tree
    from training.data import summary
    from training.export import export_onnx

    extra = {
        "architecture": {"name": config.model.name, "width": config.model.width,
                         "parameters": int(sum(p.numel() for p in model.parameters()))},
        "metrics": {"test": result["splits"]["test"], "val": result["splits"]["val"],
                    "floors_on_test": result["floors_on_test"]},
        "threshold_choice": result["threshold_choice"],
        "training_data": {"root": config.data.root, "sets": summary(prepared.splits),
                          "split_seed": config.data.seed, "oversample": config.data.oversample}
        | ({"catalogs": config.data.catalogs} if config.data.catalogs else {}),
        "training": {k: v for k, v in (fit_info or {}).items() if k not in ("history", "checkpoint")}
        | {"config": config.to_dict()},
    }
    return export_onnx(model, path, config.recipe, config.output.name, config.output.version,
                       result["thresholds"], schema=get_tree(config.data.tree), **extra)


def quantize_run(config: Config, prepared, fp32: Path, out: Path) -> dict[str, Any]:
    """The int8 copy of ``fp32``, scored on every split (``metrics_int8.json`` in the run folder)."""
    from training.quantize import export_int8

    result = export_int8(fp32, out, prepared, seed=config.data.seed)
    run_dir = Path(config.output.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics_int8.json").write_text(json.dumps(result, indent=1))
    print(f"quantized {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return result


def train_and_export(config: Config, resume: bool = False, pictures: bool = True, prepared=None) -> dict[str, Any]:
    """Train, evaluate and export as the config says (``output.onnx`` and its int8 copy when set);
    writes ``fit.json`` in the run folder and returns the test floors and timings. ``prepared``:
    the config's inputs and splits when the caller already holds them."""
    from training.evaluate import evaluate
    from training.train import fit, load_checkpoint, prepare

    started = time.perf_counter()
    prepared = prepared or prepare(config)
    prep_s = time.perf_counter() - started
    info = fit(config, prepared, resume=resume)
    info["prepare_s"] = prep_s
    model = load_checkpoint(config, info["checkpoint"])
    result = evaluate(model, prepared, Path(config.output.run_dir), pictures=pictures)
    if config.output.onnx:
        path = export_run(config, model, prepared, result, info, Path(config.output.onnx))
        print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB)")
        if config.output.int8_onnx:
            quantize_run(config, prepared, path, Path(config.output.int8_onnx))
    info["total_wall_s"] = time.perf_counter() - started
    (Path(config.output.run_dir) / "fit.json").write_text(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=1))
    return {"floors_on_test": result["floors_on_test"], "best_epoch": info["best_epoch"],
            "train_wall_s": round(info["wall_s"], 1), "total_wall_s": round(info["total_wall_s"], 1)}


def cmd_train(args: argparse.Namespace) -> int:
    print(json.dumps(train_and_export(_config(args), resume=args.resume, pictures=not args.no_pictures), indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate
    from training.train import load_checkpoint, prepare

    config = _config(args)
    prepared = prepare(config)
    model = load_checkpoint(config, args.checkpoint or Path(config.output.run_dir) / "best.pt")
    result = evaluate(model, prepared, Path(config.output.run_dir), pictures=not args.no_pictures)
    print(json.dumps(result["floors_on_test"], indent=1))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate
    from training.train import load_checkpoint, prepare

    config = _config(args)
    prepared = prepare(config)
    model = load_checkpoint(config, args.checkpoint or Path(config.output.run_dir) / "best.pt")
    result = evaluate(model, prepared, Path(config.output.run_dir), pictures=False)
    fit_file = Path(config.output.run_dir) / "fit.json"
    info = json.loads(fit_file.read_text()) if fit_file.exists() else None
    path = export_run(config, model, prepared, result, info, Path(args.output or config.output.onnx))
    print(f"exported {path}")
    if config.output.int8_onnx and not args.output:
        quantize_run(config, prepared, path, Path(config.output.int8_onnx))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from training.train import prepare

    config = _config(args)
    fp32, out = args.model or config.output.onnx, args.output or config.output.int8_onnx
    if not (fp32 and out):
        raise SystemExit("quantize needs the float model and an output: set output.onnx and output.int8_onnx "
                         "in the config, or pass --model and --output")
    result = quantize_run(config, prepare(config), Path(fp32), Path(out))
    print(json.dumps(result["floors_on_test"], indent=1))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from training.tune import tune

    config = _config(args)
    best = tune(config, num_samples=args.samples, epochs=args.epochs, storage=args.storage)
    print(json.dumps(best, indent=1, default=str))
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    from training.export import onnx_throughput

    print(json.dumps(onnx_throughput(Path(args.model), args.batch, args.threads), indent=1))
    return 0


def cmd_import_zoobot(args: argparse.Namespace) -> int:
    from training.zoobot_import import import_zoobot

    thresholds = {}
    for item in args.flag_threshold or []:
        key, _, value = item.partition("=")
        thresholds[key] = float(value)
    greyscale = {"greyscale": True, "colour": False, None: None}[args.channels]
    result = import_zoobot(args.checkpoint, args.output, name=args.name, version=args.version, encoder=args.encoder,
                           greyscale=greyscale, thresholds=thresholds, check_images=args.check_images,
                           check_limit=args.check_limit)
    print(json.dumps(result, indent=1))
    return 0


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else Config()
    changes: dict[str, dict[str, Any]] = {}
    if getattr(args, "run_dir", None):
        changes.setdefault("output", {})["run_dir"] = args.run_dir
    if getattr(args, "limit", None):
        changes.setdefault("data", {})["limit"] = args.limit
    if getattr(args, "epochs_override", None):
        changes.setdefault("train", {})["epochs"] = args.epochs_override
    if getattr(args, "no_export", False):
        changes.setdefault("output", {})["onnx"] = ""
    if getattr(args, "labels", None):
        changes.setdefault("data", {})["catalogs"] = config.data.catalogs + [{"path": p} for p in args.labels]
    return override(config, **changes) if changes else config


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m training`` parser (also read by the docs' command reference)."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML config (defaults for every missing key)")
        p.add_argument("--run-dir", help="override output.run_dir")
        p.add_argument("--limit", type=int, help="at most this many images per set")
        p.add_argument("--no-pictures", action="store_true")
        p.add_argument("--labels", action="append", metavar="TABLE",
                       help="also read this CSV/Parquet of Zoobot-style {question}_{answer} vote counts or fractions "
                            "on the config's tree, with a 'file' column of cutout paths (repeatable; give "
                            "evaluate and export the same, or put it in [[data.catalogs]])")

    p = sub.add_parser("train", help="train, evaluate, and export when output.onnx is set")
    common(p)
    p.add_argument("--resume", action="store_true", help="continue from run_dir/last.pt")
    p.add_argument("--epochs", dest="epochs_override", type=int)
    p.add_argument("--no-export", action="store_true")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="metrics and pictures for a checkpoint")
    common(p)
    p.add_argument("--checkpoint")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("export", help="export a checkpoint to ONNX with metadata (and the int8 copy)")
    common(p)
    p.add_argument("--checkpoint")
    p.add_argument("--output")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("quantize", help="int8 copy of an exported model, calibrated and scored on the splits")
    common(p)
    p.add_argument("--model", help="the float ONNX model (default output.onnx)")
    p.add_argument("--output", help="where to write the int8 model (default output.int8_onnx)")
    p.set_defaults(func=cmd_quantize)
    p = sub.add_parser("tune", help="Ray Tune search over lr, width, augmentation strength")
    common(p)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--storage", default=None, help="folder for Ray Tune results (default run_dir/tune)")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("speed", help="onnxruntime CPU throughput of an exported model")
    p.add_argument("model", nargs="?", default="galaxy_infer/models/default.onnx")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_speed)
    p = sub.add_parser("import-zoobot", help="convert a Zoobot checkpoint (ZoobotTree, FinetuneableZoobotTree) to ONNX")
    p.add_argument("checkpoint", help="Lightning .ckpt saved by Zoobot")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--name", help="model name (default zoobot-{tree}-{encoder})")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--encoder", help="timm architecture when the checkpoint does not name it (convnext_nano, "
                                     "efficientnet_b0, maxvit_tiny_rw_224, ...)")
    p.add_argument("--channels", choices=["colour", "greyscale"], default=None,
                   help="override the checkpoint's input channels (greyscale: one luminance channel)")
    p.add_argument("--flag-threshold", action="append", metavar="FLAG=VALUE",
                   help="threshold of one of the tree's flags (default 0.5), e.g. merger=0.3; repeatable")
    p.add_argument("--check-images", nargs="+", metavar="INPUT",
                   help="cutouts (folders, globs, files) on which ONNX must match PyTorch and, where galaxy-datasets "
                        "is installed, galaxy-infer's preprocessing must match Zoobot's view (default: random images)")
    p.add_argument("--check-limit", type=int, default=16, help="at most this many check images (default 16)")
    p.set_defaults(func=cmd_import_zoobot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    return args.func(args)
