"""Markdown tables of a run's metrics, for the model card (``python -m training.report RUN_DIR``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def floors_table(metrics: dict[str, Any]) -> str:
    rows = ["| metric (held-out test split) | value [95% bootstrap interval] | n | floor | pass |", "|---|---|---|---|---|"]
    for key, r in metrics["floors_on_test"].items():
        rows.append(f"| `{key}` | {_fmt(r['value'])}{_ci(r.get('ci95'))} | {r.get('n', '')} | {r['floor']} | "
                    f"{'yes' if r['pass'] else 'NO'} |")
    return "\n".join(rows)


def splits_table(metrics: dict[str, Any]) -> str:
    keys = [("gz1_sdss", "three_way_accuracy"), ("gz1_sdss", "merger_auc"), ("gz1_sdss", "smooth_vs_featured_auc"),
            ("gz_kaggle_spiral", "spiral_auc"), ("gzdecals_rings", "ring_auc"), ("gz2_votes", "rmse_unconditional"),
            ("gz2_votes", "rmse_train_mean"), ("gz2_votes", "rmse_ratio"), ("gz2_votes", "featured_auc")]
    rows = ["| set | metric | train | val | test | test n |", "|---|---|---|---|---|---|"]
    for name, key in keys:
        figures = [metrics["splits"][s].get(name, {}) for s in ("train", "val", "test")]
        rows.append(f"| {name} | {key} | " + " | ".join(_fmt(f.get(key)) + _ci(f.get("ci95", {}).get(key)) for f in figures)
                    + f" | {figures[2].get('n', '')} |")
    return "\n".join(rows)


def main(run_dir: str) -> None:
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    print(floors_table(metrics), "\n")
    print(splits_table(metrics), "\n")
    print("| odd feature | threshold | how chosen |\n|---|---|---|")
    for f, t in metrics["thresholds"].items():
        print(f"| {f} | {t:.3f} | {metrics['threshold_choice'][f]} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
