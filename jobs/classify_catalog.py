"""Batch job: classify cutouts into a Parquet catalog on a Ray cluster or on this machine.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/classify_catalog.py --input s3dir --output catalog
    python jobs/classify_catalog.py --input cutouts/ --output catalog      # starts a local Ray

The options of ``galaxy-infer classify`` (inputs as repeated ``--input``, the catalog as
``--output``) plus ``--profile``, which loads defaults from ``jobs/profiles/<name>.toml`` (or a
path): any option of the run, by its field name (``batch_size``, ``num_gpus_per_worker``, ...);
options given on the command line win. Under ``ray job submit`` RAY_ADDRESS is set and the job
joins that cluster; prediction tasks ask for their GPUs whether or not GPU nodes exist yet (the
autoscaler starts them) and the run fails after ``--gpu-wait-seconds`` if none can run them.
Exit status as the CLI: 0 ok, 1 failed before any work (bad model, an --input that does not exist,
existing output), 3 too many error rows or object id collisions, 75 another run holds the output.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working_dir

from galaxy_infer.cli import add_classify_options, run_classify  # noqa: E402
from galaxy_infer.options import options_from_args, profile_keys  # noqa: E402
from galaxy_infer.pipeline import RunConfig  # noqa: E402

PROG = "classify_catalog"
PROFILES = Path(__file__).resolve().parent / "profiles"
PROFILE_KEYS = profile_keys()


def load_profile(name: str) -> dict:
    path = Path(name) if name.endswith(".toml") else PROFILES / f"{name}.toml"
    profile = tomllib.loads(path.read_text())
    unknown = set(profile) - PROFILE_KEYS
    if unknown:
        raise SystemExit(f"{PROG}: unknown keys in {path}: {', '.join(sorted(unknown))}")
    return profile


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="INPUT",
                   help="folder, glob, file or manifest; repeat for more")
    p.add_argument("--output", required=True, help="catalog folder to create")
    p.add_argument("--profile", default=None, help=f"hardware profile: a name in {PROFILES} or a .toml path")
    add_classify_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.profile:
        parser.set_defaults(**load_profile(known.profile))
    args = parser.parse_args(argv)
    return run_classify(RunConfig(inputs=args.input, out=args.output, overwrite=args.overwrite,
                                  **options_from_args(args)), PROG)


if __name__ == "__main__":
    raise SystemExit(main())
