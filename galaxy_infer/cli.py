"""``galaxy-infer``: classify cutouts into a Parquet catalog, or describe a model."""
from __future__ import annotations

import argparse
import json
import sys

from galaxy_infer.catalog import format_errors
from galaxy_infer.errors import ModelError
from galaxy_infer.model import DEVICES, load_model_info, resolve_model
from galaxy_infer.pipeline import DEFAULT_MAX_ERROR_FRACTION, RunConfig, classify

EXIT_OK, EXIT_FAILED, EXIT_TOO_MANY_ERRORS = 0, 1, 3
"""0: catalog written; 1: failed before writing one (bad model or input argument, existing output);
3: catalog written, but more than --max-error-fraction of its rows are errors, or object ids collided."""


def add_classify_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``galaxy-infer classify`` and the Ray batch job."""
    parser.add_argument("--model", default="default",
                        help="ONNX file exported by galaxy-infer training, or a bundled model: 'default' "
                             "(float32) or 'int8' (quantized: same test metrics, faster on CPU) (default: default)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where onnxruntime runs: cuda fails unless the GPU is really used; "
                             "auto takes cuda when available, else cpu (default: auto)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per prediction batch; the last batch is zero-padded (default: 256)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs for the local Ray started when no cluster is given (default: all)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="chunks classified at once (default: one per CPU, or one per GPU with cuda)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address; default: RAY_ADDRESS if set, else a local Ray")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing catalog at the output folder (atomically)")
    parser.add_argument("--id-keyword", default=None, metavar="KEY",
                        help="take each FITS file's object id from header keyword KEY (e.g. OBJID); other files "
                             "keep the file-name rule (default: manifest object_id, else the file name)")
    parser.add_argument("--max-error-fraction", type=float, default=DEFAULT_MAX_ERROR_FRACTION,
                        help="exit with status 3 when more than this share of rows are errors; the catalog "
                             f"is still written (default: {DEFAULT_MAX_ERROR_FRACTION})")


def config_from_args(inputs: list[str], out: str, args: argparse.Namespace) -> RunConfig:
    return RunConfig(inputs=inputs, out=out, model=args.model, device=args.device, batch_size=args.batch_size,
                     num_cpus=args.num_cpus, num_workers=args.num_workers, address=args.address,
                     overwrite=args.overwrite, id_keyword=args.id_keyword)


def run_and_report(config: RunConfig, max_error_fraction: float) -> int:
    """Run, print the summary, and turn the error share into an exit status."""
    try:
        summary = classify(config)
    except (ModelError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"galaxy-infer: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(summary))
    status = EXIT_OK
    if summary["id_collisions"]:
        print(f"galaxy-infer: {summary['id_collisions']} inputs share an object id with another input; they are "
              "error rows naming each other (see 'object id collision')", file=sys.stderr)
        status = EXIT_TOO_MANY_ERRORS
    share = summary["errors"] / summary["rows"] if summary["rows"] else 0.0
    if share > max_error_fraction:
        print(f"galaxy-infer: {share:.1%} of rows are errors, over --max-error-fraction "
              f"{max_error_fraction:.1%}", file=sys.stderr)
        status = EXIT_TOO_MANY_ERRORS
    return status


def format_summary(summary: dict) -> str:
    lines = [
        f"catalog: {summary['output']}",
        f"rows: {summary['rows']}  ok: {summary['ok']}  errors: {summary['errors']}",
        f"model: {summary['model_id']}  device: {summary['device']}  run: {summary['run_id']}",
        f"time: {summary['wall_seconds']:.1f} s  ({summary['rows_per_second_wall']:.0f} rows/s end to end)",
    ]
    return "\n".join(lines + format_errors(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galaxy-infer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="classify cutouts into a Parquet catalog",
                       description="Classify FITS/JPEG/PNG cutouts into a Parquet morphology catalog. "
                                   "INPUT is a folder (searched recursively), a glob, a file, or a "
                                   "CSV/Parquet manifest with a 'path' column (optional object_id, ra, dec).")
    c.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, globs, files or manifests")
    c.add_argument("--out", required=True, help="catalog folder to create (part-*.parquet + _run_summary.json)")
    add_classify_options(c)
    i = sub.add_parser("info", help="describe a model: schema, input shape, recipe, thresholds, metrics")
    i.add_argument("model", nargs="?", default="default", help="ONNX file or bundled model name (default: default)")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        try:
            info = load_model_info(resolve_model(args.model))
        except ModelError as exc:
            print(f"galaxy-infer: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        description = info.describe()
        if args.json:
            print(json.dumps(description, indent=2, default=str))
        else:
            for key, value in description.items():
                print(f"{key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
        return EXIT_OK
    return run_and_report(config_from_args(args.inputs, args.out, args), args.max_error_fraction)


if __name__ == "__main__":
    raise SystemExit(main())
