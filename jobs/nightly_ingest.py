"""Nightly incremental ingest: classify the inbox cutouts the catalog does not yet hold.

    python jobs/nightly_ingest.py --inbox /data/inbox --catalog /data/catalog [--date YYYY-MM-DD]

Writes ``catalog/ingest_date=YYYY-MM-DD/part-*.parquet``. Safe to rerun at any time and after a
crash at any point: the catalog is the ledger, chunks are committed by atomic rename, so a rerun
classifies only what is missing. Exit codes (for cron alerting):

  0   done, or nothing to do
  1   failed (committed chunks stay; rerun to finish)
  2   bad options
  3   more than --max-error-fraction of the objects tried are error rows or unreadable now; or inbox
      files whose object id another object already has were left unclassified (named in the summary)
  75  another ingest holds catalog/.ingest.lock (EX_TEMPFAIL; try later)

Objects that could not be read this time (reasons starting 'cannot read now:') are not written
and are tried again by the next run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working_dir

from galaxy_infer.cli import add_shard_field_options, shard_fields_from_args  # noqa: E402
from galaxy_infer.errors import ModelError, StorageError  # noqa: E402
from galaxy_infer.ingest import (EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_TOO_MANY_ERRORS,  # noqa: E402
                                 IngestConfig, IngestUsageError, format_ingest_summary, ingest)
from galaxy_infer.model import DEVICES  # noqa: E402
from galaxy_infer.pipeline import DEFAULT_MAX_ERROR_FRACTION  # noqa: E402
from galaxy_infer.storage import Locked  # noqa: E402
from galaxy_infer import storage  # noqa: E402
from galaxy_infer.storage import ANONYMOUS_ENV  # noqa: E402
from galaxy_infer.summary import format_summary, summarize  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nightly_ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inbox", required=True, help="folder or s3:// prefix of incoming cutouts (searched recursively)")
    p.add_argument("--catalog", required=True, help="catalog root (folder or s3:// prefix) holding ingest_date=*/ partitions")
    p.add_argument("--anonymous", action="store_true", help="read an s3:// inbox unsigned (public bucket)")
    p.add_argument("--date", default=None, help="partition to write new rows into (default: today, UTC)")
    p.add_argument("--model", default="default", help="ONNX file or bundled model name: default or int8")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per prediction batch (default: the model's preference, else 256)")
    p.add_argument("--chunk-rows", type=int, default=5000,
                   help="rows per committed Parquet file; a crash loses at most one chunk of work")
    p.add_argument("--settle-seconds", type=float, default=60.0,
                   help="leave files modified more recently than this for the next run (default: 60)")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--num-gpus-per-worker", type=float, default=None)
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--object-store-mb", type=int, default=None,
                   help="object store of the local Ray started when no cluster is given (default: 1024)")
    p.add_argument("--id-keyword", default=None, metavar="KEY",
                   help="take new FITS files' object ids from header keyword KEY (default: the file name)")
    p.add_argument("--max-error-fraction", type=float, default=DEFAULT_MAX_ERROR_FRACTION)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_shard_field_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = IngestConfig(inbox=args.inbox, catalog=args.catalog, model=args.model, device=args.device,
                          batch_size=args.batch_size, chunk_rows=args.chunk_rows,
                          settle_seconds=args.settle_seconds, num_cpus=args.num_cpus,
                          num_workers=args.num_workers, num_gpus_per_worker=args.num_gpus_per_worker,
                          address=args.address, object_store_mb=args.object_store_mb, id_keyword=args.id_keyword,
                          shard_fields=shard_fields_from_args(args))
    if args.date:
        config.date = args.date
    if args.anonymous:
        os.environ[ANONYMOUS_ENV] = "1"
    try:
        summary = ingest(config)
    except Locked as exc:
        print(f"nightly_ingest: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (ModelError, IngestUsageError, StorageError) as exc:
        print(f"nightly_ingest: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - Ray errors too: cron must see 1 and the traceback; chunks stay
        traceback.print_exc(file=sys.stderr)
        print(f"nightly_ingest: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    added = summarize([storage.join(config.catalog, f) for f in summary["files"]]) if summary["files"] else None
    if args.json:
        print(json.dumps({**summary, "added": added}, indent=2))
    else:
        print(format_ingest_summary(summary))
        if added:
            print(f"\nthe {added['rows']:,} rows added:\n{format_summary(added)}")
    if summary["id_collisions"]:
        print(f"nightly_ingest: {summary['id_collisions']} inbox files were not classified because their object id "
              "is already used; they are retried every run until the ids differ", file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    handled = summary["rows"] + summary["retry_next_run"]  # unreadable now: not written, not classified either
    share = summary["errors"] / handled if handled else 0.0
    if share > args.max_error_fraction:
        print(f"nightly_ingest: {share:.1%} of the objects tried are errors or unreadable now, over "
              f"{args.max_error_fraction:.1%}", file=sys.stderr)
        return EXIT_TOO_MANY_ERRORS
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
