"""``galaxy-infer``: classify cutouts into a Parquet catalog; look at, summarise and cross-match catalogs."""
from __future__ import annotations

import argparse
import json
import os
import sys

from galaxy_infer.catalog import format_errors
from galaxy_infer.cluster import GPU_WAIT_SECONDS
from galaxy_infer.errors import ModelError, StorageError
from galaxy_infer.model import DEVICES, load_model_info, resolve_model
from galaxy_infer.pipeline import DEFAULT_MAX_ERROR_FRACTION, RunConfig, classify
from galaxy_infer.shards import ShardFields
from galaxy_infer.storage import ANONYMOUS_ENV, Locked

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
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per prediction batch; the last batch is zero-padded (default: the "
                             "model's preference, else 256)")
    parser.add_argument("--dirichlet-intervals", action="store_true",
                        help="for models that predict Dirichlet concentrations (Zoobot), also write each "
                             "answer's concentration and a 90%% interval of its fraction")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs for the local Ray started when no cluster is given (default: all)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="chunks classified at once (default: one per CPU, or one per GPU with cuda)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address; default: RAY_ADDRESS if set, else a local Ray")
    parser.add_argument("--gpu-wait-seconds", type=float, default=GPU_WAIT_SECONDS,
                        help="on a cluster, fail when no node can run a prediction task (GPU nodes scaling from "
                             f"zero) for this long (default: {GPU_WAIT_SECONDS:.0f})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing catalog at the output folder (atomically)")
    parser.add_argument("--id-keyword", default=None, metavar="KEY",
                        help="take each FITS file's object id from header keyword KEY (e.g. OBJID); other files "
                             "keep the file-name rule (default: manifest object_id, else the file name)")
    parser.add_argument("--anonymous", action="store_true",
                        help="read s3:// inputs unsigned (public buckets); credentials otherwise come from the "
                             "AWS chain: AWS_* variables, AWS_PROFILE, instance or pod roles. AWS_ENDPOINT_URL "
                             "selects an S3-compatible store")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress (default: a bar on a terminal, else a plain line every 30 s)")
    parser.add_argument("--max-error-fraction", type=float, default=DEFAULT_MAX_ERROR_FRACTION,
                        help="exit with status 3 when more than this share of rows are errors; the catalog "
                             f"is still written (default: {DEFAULT_MAX_ERROR_FRACTION})")
    add_shard_field_options(parser)


def add_shard_field_options(parser: argparse.ArgumentParser) -> None:
    """Field names for shards (HDF5, Parquet, tar, npz) whose layout detection is ambiguous."""
    g = parser.add_argument_group("shards", "fields of HDF5/Parquet/npz shards and WebDataset JSON, when detection "
                                            "is ambiguous (default: detected)")
    g.add_argument("--image-field", default=None, help="the image stack or image-bytes column")
    g.add_argument("--id-field", default=None,
                   help="the object id field (default: object_id, id_str, iauname or dr8_id; else <shard>#<row>)")
    g.add_argument("--ra-field", default=None, help="the right ascension field (default: ra)")
    g.add_argument("--dec-field", default=None, help="the declination field (default: dec)")


def shard_fields_from_args(args: argparse.Namespace) -> ShardFields:
    return ShardFields(image=args.image_field, id=args.id_field, ra=args.ra_field, dec=args.dec_field)


def config_from_args(inputs: list[str], out: str, args: argparse.Namespace) -> RunConfig:
    if args.anonymous:
        os.environ[ANONYMOUS_ENV] = "1"  # read by every filesystem this process and its Ray workers open
    return RunConfig(inputs=inputs, out=out, model=args.model, device=args.device, batch_size=args.batch_size,
                     num_cpus=args.num_cpus, num_workers=args.num_workers, address=args.address,
                     gpu_wait_seconds=args.gpu_wait_seconds, overwrite=args.overwrite, id_keyword=args.id_keyword,
                     dirichlet_intervals=args.dirichlet_intervals, shard_fields=shard_fields_from_args(args),
                     progress=False if args.no_progress else None)


def run_and_report(config: RunConfig, max_error_fraction: float) -> int:
    """Run, print the summary, and turn the error share into an exit status."""
    try:
        summary = classify(config)
    except (ModelError, StorageError, FileNotFoundError, FileExistsError, ValueError, RuntimeError, Locked) as exc:
        print(f"galaxy-infer: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(summary))
    status = EXIT_OK
    if summary["id_collisions"]:
        print(f"galaxy-infer: {summary['id_collisions']} inputs share an object id with another input; they are "
              "error rows naming each other (error_kind 'id-collision')", file=sys.stderr)
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
    lines += [f"predicted on {kind}: {w['device']} ({w['execution_provider']}), {w['rows']} rows, {w['nodes']} node(s)"
              for kind, w in summary.get("prediction_workers", {}).items()]
    if summary.get("decode_split"):
        lines.append("decoded on: " + ", ".join(f"{kind} {d['share']:.0%}" for kind, d in summary["decode_split"].items()))
    return "\n".join(lines + format_errors(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galaxy-infer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="classify cutouts into a Parquet catalog",
                       description="Classify FITS/JPEG/PNG cutouts into a Parquet morphology catalog. "
                                   "INPUT is a folder (searched recursively), a glob, a file, a shard "
                                   "(.h5/.hdf5, Parquet with an image column, .tar/.tar.gz, .npy/.npz, "
                                   "multi-HDU FITS), or a CSV/Parquet manifest with a 'path' column "
                                   "(optional object_id, ra, dec).")
    c.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, globs, files or manifests")
    c.add_argument("--out", required=True, help="catalog folder or object-store prefix (s3://bucket/catalogs/run-1) "
                                                "to create: part-*.parquet + _run_summary.json")
    add_classify_options(c)
    i = sub.add_parser("info", help="describe a model: tree, input shape, recipe, flags, metrics")
    i.add_argument("model", nargs="?", default="default", help="ONNX file or bundled model name (default: default)")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    add_catalog_commands(sub)
    return parser


def add_catalog_commands(sub: argparse._SubParsersAction) -> None:
    """``gallery``, ``summary``, ``crossmatch`` and ``hats``: what astronomers do with a catalog."""
    from galaxy_infer.gallery import COLUMNS, TILE, VIEWS

    catalog_help = "catalog folder (a classify output or an ingest root), or Parquet file"
    g = sub.add_parser("gallery", help="PNG mosaic and HTML page of the cutouts behind catalog rows",
                       description="Write OUT.png and OUT.html: the cutouts of the rows matching --where, sorted "
                                   "by --sort, rendered with the model's own preprocessing recipe.")
    g.add_argument("catalog", help=catalog_help)
    g.add_argument("--out", required=True, help="file name without extension: writes OUT.png and OUT.html")
    g.add_argument("--sort", default=None, help="column to sort by, descending (default: catalog order); "
                                                "galaxy10_class and galaxy10_confidence work too")
    g.add_argument("--ascending", action="store_true", help="sort ascending")
    g.add_argument("--where", default=None, help="pandas query, e.g. \"status == 'ok' and odd_ring_flag\"")
    g.add_argument("--top", type=int, default=100, help="rows to show (default: 100)")
    g.add_argument("--tile", type=int, default=TILE, help=f"tile size in pixels in the PNG (default: {TILE})")
    g.add_argument("--columns", type=int, default=COLUMNS, help=f"tiles per row in the PNG (default: {COLUMNS})")
    g.add_argument("--view", choices=VIEWS, default="full",
                   help="full: the whole cutout, the model's crop marked; model: only the crop (default: full)")
    g.add_argument("--root", default=None,
                   help="folder that relative source_path values are relative to, i.e. where classify ran "
                        "(default: the current folder)")
    s = sub.add_parser("summary", help="rows, errors, flags, vote fractions, Galaxy10 classes, runs of a catalog")
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    x = sub.add_parser("crossmatch", help="match a catalog by position with another catalog (astropy)",
                       description="Nearest OTHER row within --radius-arcsec of each catalog row with a position.")
    x.add_argument("catalog", help=catalog_help)
    x.add_argument("other", help="CSV, Parquet or FITS table, or another catalog folder")
    x.add_argument("--radius-arcsec", type=float, default=1.0, help="match radius (default: 1)")
    x.add_argument("--other-ra", default="ra", help="RA column of OTHER, degrees (default: ra)")
    x.add_argument("--other-dec", default="dec", help="Dec column of OTHER, degrees (default: dec)")
    x.add_argument("--out", default=None, help="write the matches to this .parquet or .csv file")
    h = sub.add_parser("hats", help="export a catalog to HATS for LSDB (needs the lsdb extra)",
                       description="Write the catalog's rows with a position as a HATS collection "
                                   "(pip install 'galaxy-infer[lsdb]'); open it with lsdb.open_catalog(OUT).")
    h.add_argument("catalog", help=catalog_help)
    h.add_argument("out", help="folder to create")
    h.add_argument("--overwrite", action="store_true")


def pd_columns(catalog: str) -> list[str]:
    from galaxy_infer.summary import open_catalog

    return open_catalog(catalog).schema.names


def run_catalog_command(args: argparse.Namespace) -> int:
    if args.command == "gallery":
        from galaxy_infer.gallery import write_gallery

        png, page, chosen = write_gallery(args.catalog, args.out, sort=args.sort, where=args.where, top=args.top,
                                          ascending=args.ascending, size=args.tile, columns=args.columns,
                                          view=args.view, root=args.root)
        print(f"{len(chosen.rows)} of {chosen.matched} rows: {png}  {page}")
    elif args.command == "summary":
        from galaxy_infer.summary import format_summary as format_catalog_summary, summarize

        summary = summarize(args.catalog)
        print(json.dumps(summary, indent=2) if args.json else format_catalog_summary(summary))
    elif args.command == "crossmatch":
        from galaxy_infer.crossmatch import crossmatch

        matches = crossmatch(args.catalog, args.other, args.radius_arcsec, other_ra=args.other_ra,
                             other_dec=args.other_dec)
        if args.out:
            (matches.to_csv if args.out.lower().endswith(".csv") else matches.to_parquet)(args.out, index=False)
        print(f"{len(matches)} matches within {args.radius_arcsec} arcsec" + (f": {args.out}" if args.out else ""))
        if not args.out and len(matches):
            other = [c for c in matches.columns if c not in pd_columns(args.catalog)]
            print(matches[["object_id", "ra", "dec", *other]].to_string(max_rows=50, max_colwidth=40))
    else:
        from galaxy_infer.crossmatch import to_hats

        print(f"HATS collection: {to_hats(args.catalog, args.out, overwrite=args.overwrite)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("gallery", "summary", "crossmatch", "hats"):
        try:
            return run_catalog_command(args)
        except (FileNotFoundError, ValueError, KeyError, NameError, SyntaxError, ImportError, OSError) as exc:
            print(f"galaxy-infer: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
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
