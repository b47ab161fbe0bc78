"""``make demo``: classify a generated sample with the bundled model and show the catalog."""
from __future__ import annotations

import argparse
from pathlib import Path

from galaxy_infer.cli import format_summary
from galaxy_infer.model import bundled_model_path
from galaxy_infer.pipeline import RunConfig, classify
from galaxy_infer.synthetic import write_sample

SHOWN = ["object_id", "status", "smooth_or_featured_smooth_fraction",
         "smooth_or_featured_featured_or_disk_fraction", "disk_edge_on_yes_fraction",
         "has_spiral_arms_proportion_asked", "odd_merger_prob", "odd_ring_flag"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo-output")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.workdir)
    sample = write_sample(work / "sample", n=24)
    print(f"generated {len(sample)} synthetic cutouts (JPEG and FITS) in {work / 'sample'}")
    print(f"model: {bundled_model_path()} (the bundled default model)")
    summary = classify(RunConfig(inputs=[str(work / "sample")], out=str(work / "catalog"),
                                 num_cpus=args.num_cpus, overwrite=True))
    print(format_summary(summary))

    import pandas as pd

    frame = pd.read_parquet(summary["output"])
    print(f"\nread back with pandas.read_parquet({summary['output']!r}): {len(frame)} rows, "
          f"{len(frame.columns)} columns; a few of them:")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        kind = frame["object_id"].str.extract(r"synthetic_([a-z_]+)_\d+", expand=False)
        shown = frame.assign(kind=kind).sort_values("object_id").groupby("kind").head(2)
        print(shown[SHOWN].to_string(index=False))


if __name__ == "__main__":
    main()
