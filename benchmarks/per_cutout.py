"""CPU per cutout of ``read_and_preprocess`` against decoding alone, in one process.

For a busy machine: the two loops alternate on the same real gz1 JPEGs in short rounds and the
fastest round of each counts, so a neighbour's load hits both alike. ``python -m
benchmarks.per_cutout [--rounds 100] [--files 64]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.run import SOURCE, _decode_only
from galaxy_infer.pipeline import read_and_preprocess
from galaxy_infer.preprocess import Recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--files", type=int, default=64)
    args = parser.parse_args()
    paths = [str(p) for p in sorted(SOURCE.glob("*.jpg"))[: args.files]]
    recipe = Recipe()
    batch = {"object_id": np.array(paths, dtype=object), "source_path": np.array(paths, dtype=object),
             "ra": np.full(len(paths), np.nan), "dec": np.full(len(paths), np.nan)}
    best = {"decoding alone": float("inf"), "read_and_preprocess": float("inf")}
    for _ in range(args.rounds):
        for name, run in (("decoding alone", lambda: _decode_only(paths, recipe)),
                          ("read_and_preprocess", lambda: read_and_preprocess(batch, recipe))):
            started = time.process_time()
            run()
            best[name] = min(best[name], (time.process_time() - started) / len(paths) * 1e6)
    for name, us in best.items():
        print(f"{name:<20} {us:7.1f} us CPU per cutout (fastest of {args.rounds} rounds of {len(paths)})")
    print(f"ratio {best['read_and_preprocess'] / best['decoding alone']:.3f}")


if __name__ == "__main__":
    main()
