"""Two models on the same held-out galaxies: each headline figure and the paired difference.

Separate intervals of two models on one small test split overlap even when one model is better
on nearly every resample; the paired bootstrap resamples the galaxies once for both models, so
the interval of the difference says whether a candidate is worse (or better) than the base
beyond chance. Used to decide whether a candidate replaces the shipped default (issue 17).

``python -m training.experiments.compare --config C --base shipped.onnx --candidate new.onnx [--shifts] --out F``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from training.config import load_config
from training.metrics import auc_statistic, bootstrap_ci, columns, set_statistics
from training.experiments.robustness import HEADLINE, SHIFTS

LOWER_IS_BETTER = {"rmse_ratio"}
POOLED_RINGS = "gzdecals_rings_val+test"


def paired(base: tuple[Callable, int, Any], candidate: tuple[Callable, int, Any], n_boot: int,
           seed: int) -> dict[str, Any]:
    """Both values, their difference (candidate - base) and its paired 95% bootstrap interval."""
    (a, n, strata), (b, _, _) = base, candidate
    everyone = np.arange(n)
    va, vb = a(everyone), b(everyone)
    if va is None or vb is None:
        return {"base": va, "candidate": vb, "difference": None, "ci95": None}

    def difference(idx: np.ndarray) -> float | None:
        x, y = a(idx), b(idx)
        return None if x is None or y is None else y - x

    return {"base": va, "candidate": vb, "difference": vb - va,
            "ci95": bootstrap_ci(difference, n, strata, n_boot, seed), "n": n}


def verdict(key: str, figure: dict[str, Any]) -> str:
    """'better', 'worse' (the paired interval excludes 0) or 'same' (it includes 0)."""
    ci = figure["ci95"]
    if ci is None:
        return "n/a"
    sign = -1 if key in LOWER_IS_BETTER else 1
    lo, hi = sorted((sign * ci[0], sign * ci[1]))
    return "better" if lo > 0 else "worse" if hi < 0 else "same"


def compare(logits_base: Callable[[np.ndarray], np.ndarray], logits_candidate: Callable[[np.ndarray], np.ndarray],
            prepared, shifts: dict[str, Callable] | None = None, n_boot: int = 1000,
            seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """``{shift: {"set.figure": paired figures}}`` on the test splits, plus the rings of validation
    and test pooled (validation only chose each model's epoch) on clean inputs."""
    mean = prepared.train_mean_unconditional()
    wanted = {s: [k for t, k in HEADLINE if t == s] for s, _ in HEADLINE}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, shift in (shifts or {"clean": SHIFTS["clean"]}).items():
        out[name] = {}
        for part in prepared.splits["test"]:
            if part.name not in wanted:
                continue
            x = shift(torch.from_numpy(part.images)).numpy().astype(np.float32)
            _, sa = set_statistics(part.labelled, logits_base(x), mean)
            _, sb = set_statistics(part.labelled, logits_candidate(x), mean)
            for key in wanted[part.name]:
                figure = paired(sa[key], sb[key], n_boot, seed)
                out[name][f"{part.name}.{key}"] = figure | {"verdict": verdict(key, figure)}
    rings = [p for split in ("val", "test") for p in prepared.splits[split] if p.name == "gzdecals_rings"]
    if rings:
        y = np.concatenate([p.labelled.table["ring"].to_numpy(int) for p in rings])
        x = np.concatenate([p.images for p in rings])
        a, b = (auc_statistic(y, columns(f(x))["odd_ring_prob"]) for f in (logits_base, logits_candidate))
        figure = paired((a, len(y), y), (b, len(y), y), n_boot, seed)
        out.setdefault("clean", {})[f"{POOLED_RINGS}.ring_auc"] = figure | {"verdict": verdict("ring_auc", figure)}
    return out


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: base, candidate, and the difference with its paired interval, per shift and figure."""
    rows = ["| shift | figure | n | base | candidate | candidate - base [95% paired interval] | verdict |",
            "|---|---|---|---|---|---|---|"]
    for shift, figures in results.items():
        for key, f in figures.items():
            if f["difference"] is None:
                rows.append(f"| {shift} | {key} | | n/a | n/a | n/a | n/a |")
                continue
            ci = f"[{f['ci95'][0]:+.3f}, {f['ci95'][1]:+.3f}]" if f["ci95"] else ""
            rows.append(f"| {shift} | {key} | {f['n']} | {f['base']:.3f} | {f['candidate']:.3f} | "
                        f"{f['difference']:+.3f} {ci} | {f['verdict']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from galaxy_infer.model import Predictor
    from training.train import prepare

    parser = argparse.ArgumentParser(prog="python -m training.experiments.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the TOML config whose splits to score")
    parser.add_argument("--base", required=True, help="the ONNX model to compare against (the shipped one)")
    parser.add_argument("--candidate", required=True, help="the ONNX model that might replace it")
    parser.add_argument("--shifts", action="store_true", help="also under every survey shift of training.experiments.robustness")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", help="write all figures here as JSON")
    args = parser.parse_args(argv)
    prepared = prepare(load_config(args.config))
    base = Predictor(args.base, batch_size=256, num_threads=2)
    candidate = Predictor(args.candidate, batch_size=256, num_threads=2)
    results = compare(base.predict, candidate.predict, prepared, SHIFTS if args.shifts else None, args.n_boot)
    if args.out:
        Path(args.out).write_text(json.dumps({"base": args.base, "candidate": args.candidate} | results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
