"""``galaxy-infer``: classify cutouts into a Parquet catalog; look at, summarise and cross-match catalogs."""
from __future__ import annotations

import argparse
import json
import sys

import traceback
from collections.abc import Callable
from typing import Any

from galaxy_infer import storage
from galaxy_infer.catalog import format_errors
from galaxy_infer.environment import int8_kernels, versions
from galaxy_infer.errors import ModelError, StorageError
from galaxy_infer.ingest import IngestConfig, IngestUsageError, format_ingest_summary, ingest
from galaxy_infer.model import load_model_info, resolve_model
from galaxy_infer.options import RunOptions, add_run_options, options_from_args
from galaxy_infer.pipeline import RunConfig, classify
from galaxy_infer.storage import Locked
from galaxy_infer.summary import format_summary as format_catalog_summary, summarize

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_ERRORS, EXIT_LOCKED = 0, 1, 2, 3, 75
"""The exit policy of ``classify``, ``ingest`` and the jobs (for cron and CI): 0 done (or nothing to do);
1 failed before anything was committed (bad model or input, existing output; committed ingest chunks
stay, rerun to finish); 2 bad options; 3 written, but more than --max-error-fraction of the objects
tried are errors, or object ids collided; 75 (EX_TEMPFAIL) another run holds the output's lock."""

FAILURES = (ModelError, StorageError, IngestUsageError, FileNotFoundError, FileExistsError, ValueError, RuntimeError)
"""Errors that mean a run could not start or finish, reported in one line without a traceback."""


def add_classify_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``galaxy-infer classify`` and the Ray batch job: every :class:`RunOptions` field, and --overwrite."""
    add_run_options(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing catalog at the output folder (atomically)")


def exit_status(summary: dict[str, Any], options: RunOptions, prog: str, collided: str) -> int:
    """The exit policy for a finished run: object id collisions (``collided`` says what became of them)
    or an error share over ``--max-error-fraction`` give 3. Objects unreadable now count as tried."""
    status = EXIT_OK
    if summary["id_collisions"]:
        print(f"{prog}: {summary['id_collisions']} {collided}", file=sys.stderr)
        status = EXIT_TOO_MANY_ERRORS
    tried = summary["rows"] + summary.get("retry_next_run", 0)
    share = summary["errors"] / tried if tried else 0.0
    if share > options.max_error_fraction:
        print(f"{prog}: {share:.1%} of the objects tried are errors or unreadable now, over "
              f"--max-error-fraction {options.max_error_fraction:.1%}", file=sys.stderr)
        status = EXIT_TOO_MANY_ERRORS
    return status


def guarded(run: Callable[[], dict[str, Any]], prog: str) -> dict[str, Any] | int:
    """``run()``'s summary, or the exit status its failure maps to (the reason printed on one line)."""
    try:
        return run()
    except Locked as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except FAILURES as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - Ray errors too: cron must see 1 and the traceback
        traceback.print_exc(file=sys.stderr)
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run_classify(config: RunConfig, prog: str = "galaxy-infer") -> int:
    """Classify, print the summary, and apply the exit policy."""
    summary = guarded(lambda: classify(config), prog)
    if isinstance(summary, int):
        return summary
    print(format_summary(summary))
    return exit_status(summary, config, prog, "inputs share an object id with another input; they are error rows "
                                              "naming each other (error_kind 'id-collision')")


def add_ingest_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``galaxy-infer ingest`` and ``jobs/nightly_ingest.py``."""
    parser.add_argument("--inbox", required=True,
                        help="folder or s3:// prefix of incoming cutouts (searched recursively)")
    parser.add_argument("--catalog", required=True,
                        help="catalog root (folder or s3:// prefix) holding ingest_date=*/ partitions")
    parser.add_argument("--date", default=None, help="partition to write new rows into (default: today, UTC)")
    parser.add_argument("--chunk-rows", type=int, default=5000,
                        help="most rows per Ray task, and so per committed Parquet file (fewer when --task-rows or the "
                             "model's preference says so); a crash loses at most the tasks in flight (default: 5000)")
    parser.add_argument("--settle-seconds", type=float, default=60.0,
                        help="leave files modified more recently than this for the next run (default: 60)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_run_options(parser)


def run_ingest(args: argparse.Namespace, prog: str = "galaxy-infer") -> int:
    """One night of ingest from parsed options: summary, rows added, exit policy."""
    config = IngestConfig(inbox=args.inbox, catalog=args.catalog, chunk_rows=args.chunk_rows,
                          settle_seconds=args.settle_seconds, **options_from_args(args))
    if args.date:
        config.date = args.date
    summary = guarded(lambda: ingest(config), prog)
    if isinstance(summary, int):
        return summary
    added = summarize([storage.join(config.catalog, f) for f in summary["files"]]) if summary["files"] else None
    if args.json:
        print(json.dumps({**summary, "added": added}, indent=2))
    else:
        print(format_ingest_summary(summary))
        if added:
            print(f"\nthe {added['rows']:,} rows added:\n{format_catalog_summary(added)}")
    return exit_status(summary, config, prog, "inbox files were not classified because their object id is already "
                                              "used; they are retried every run until the ids differ")


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
    n = sub.add_parser("ingest", help="one night of incremental ingest: classify the inbox files the catalog "
                                      "does not hold yet, exactly once",
                       description="Classify the inbox cutouts that the catalog does not hold yet into "
                                   "CATALOG/ingest_date=DATE/part-*.parquet. Safe to rerun at any time and after a "
                                   "crash at any point: committed chunks are the ledger. Objects that could not be "
                                   "read this time are retried by the next run. Exit status: 0 done or nothing to "
                                   "do, 1 failed (rerun to finish), 2 bad options, 3 too many errors or id "
                                   "collisions, 75 another ingest holds the catalog's lock.")
    add_ingest_options(n)
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
        summary = summarize(args.catalog)
        print(json.dumps(summary, indent=2) if args.json else format_catalog_summary(summary))
    elif args.command == "crossmatch":
        from galaxy_infer.crossmatch import crossmatch, write_table

        matches = crossmatch(args.catalog, args.other, args.radius_arcsec, other_ra=args.other_ra,
                             other_dec=args.other_dec)
        if args.out:
            write_table(matches, args.out)
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
        description = {**info.describe(), "this_machine": {"int8_kernels": int8_kernels(), "versions": versions()}}
        if args.json:
            print(json.dumps(description, indent=2, default=str))
        else:
            for key, value in description.items():
                print(f"{key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
        return EXIT_OK
    if args.command == "ingest":
        return run_ingest(args)
    return run_classify(RunConfig(inputs=args.inputs, out=args.out, overwrite=args.overwrite,
                                  **options_from_args(args)))


if __name__ == "__main__":
    raise SystemExit(main())
