"""Nightly incremental ingest for cron: ``galaxy-infer ingest`` as a script a checkout or ``ray job submit`` can run.

    python jobs/nightly_ingest.py --inbox /data/inbox --catalog /data/catalog [--date YYYY-MM-DD]

Writes ``catalog/ingest_date=YYYY-MM-DD/part-*.parquet``. Safe to rerun at any time and after a
crash at any point: the catalog is the ledger, and each task's part is published (renamed, or copied
on an object store) only once the driver accepted it, so a rerun classifies only what is missing.
Objects that could not be read this time (error kind
``unreadable-now``) are not written and are tried again by the next run. Options and exit codes
(for cron alerting) are those of ``galaxy-infer ingest``:

  0   done, or nothing to do
  1   failed (published parts stay; rerun to finish)
  2   bad options
  3   more than --max-error-fraction of the objects tried are error rows or unreadable now; or inbox
      files whose object id another object already has were left unclassified (named in the summary)
  75  another ingest holds catalog/.ingest.lock (EX_TEMPFAIL; try later)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working_dir

from galaxy_infer.cli import add_ingest_options, run_ingest  # noqa: E402

PROG = "nightly_ingest"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ingest_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_ingest(build_parser().parse_args(argv), PROG)


if __name__ == "__main__":
    raise SystemExit(main())
