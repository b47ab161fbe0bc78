"""Batch job: classify cutouts into a Parquet catalog on a Ray cluster or on this machine.

    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/classify_catalog.py --input s3dir --output catalog
    python jobs/classify_catalog.py --input cutouts/ --output catalog      # starts a local Ray

Same options as ``galaxy-infer classify`` plus cluster knobs; ``--profile`` loads defaults for
batch size, worker count and GPUs per prediction task from ``jobs/profiles/<name>.toml`` (or a
path), and options given on the command line win. Under ``ray job submit`` RAY_ADDRESS is set
and the job joins that cluster; prediction tasks ask for their GPUs whether or not GPU nodes exist yet
(the autoscaler starts them) and the run fails after ``--gpu-wait-seconds`` if none can run them.
Exit status as the CLI: 0 ok, 1 failed before any work (bad model, an --input that does not exist,
existing output), 3 too many error rows or object id collisions.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working_dir

from galaxy_infer.cli import add_classify_options, config_from_args, run_and_report  # noqa: E402

PROFILES = Path(__file__).resolve().parent / "profiles"
PROFILE_KEYS = {"device", "batch_size", "num_workers", "num_gpus_per_worker", "num_cpus", "max_error_fraction",
                "object_store_mb", "gpu_wait_seconds", "task_rows"}


def load_profile(name: str) -> dict:
    path = Path(name) if name.endswith(".toml") else PROFILES / f"{name}.toml"
    profile = tomllib.loads(path.read_text())
    unknown = set(profile) - PROFILE_KEYS
    if unknown:
        raise SystemExit(f"classify_catalog: unknown keys in {path}: {', '.join(sorted(unknown))}")
    return profile


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="classify_catalog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="INPUT",
                   help="folder, glob, file or manifest; repeat for more")
    p.add_argument("--output", required=True, help="catalog folder to create")
    p.add_argument("--profile", default=None, help=f"hardware profile: a name in {PROFILES} or a .toml path")
    add_classify_options(p)
    p.add_argument("--num-gpus-per-worker", type=float, default=None,
                   help="GPUs each prediction task reserves (default: 1 with cuda, 0 with cpu)")
    p.add_argument("--task-rows", type=int, default=1024,
                   help="cutouts per Ray task: fewer spread a small run over more workers (default: 1024)")
    p.add_argument("--object-store-mb", type=int, default=None,
                   help="object store of the local Ray started when no cluster is given (default: 1024)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.profile:
        parser.set_defaults(**load_profile(known.profile))
    args = parser.parse_args(argv)
    config = config_from_args(args.input, args.output, args)
    config.num_gpus_per_worker = args.num_gpus_per_worker
    config.task_rows = args.task_rows
    config.object_store_mb = args.object_store_mb
    return run_and_report(config, args.max_error_fraction)


if __name__ == "__main__":
    raise SystemExit(main())
