"""Which survey augmentation helps: the recipe trained with one operation off, paired with a model of the recipe.

For each named operation of the config's ``[augment]`` section, the config is trained with that
operation switched off into ``RUN_ROOT/no-OP`` (``model.onnx`` there; the shipped model is never
written), then compared with ``--base``, a model of the full recipe, on the test splits under every
survey shift (:mod:`training.experiments.compare`, written to ``compare.json`` there). Where the model without
an operation is worse beyond the paired interval, the operation helped; where it is better, the
operation cost. Op ``none`` trains the full recipe again: its differences from ``--base`` are what
two runs of one recipe differ by, the yardstick for the others (training is seeded but not
bit-identical across machines and days).

``python -m training.experiments.ablate --config training/configs/default.toml --base galaxy_infer/models/default.onnx
--op grey --op framing [--threads 1] [--run-root runs/ablate]``; a finished op is compared again, not
retrained; ``--summary`` prints the table of every finished op without training.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.config import Config, load_config, override

OFF: dict[str, dict[str, Any]] = {
    "none": {},
    "grey": {"grey": 0.0},
    "colour": {"colour": 0.0},
    "blur": {"blur": 0.0},
    "noise": {"noise": 0.0},
    "dim": {"dim": 1.0},
    "framing": {"framing": ()},
}
"""Operation -> the ``[augment]`` values that switch it off (``none``: the recipe unchanged)."""


def ablated(config: Config, op: str, run_root: Path, threads: int | None = None) -> Config:
    """The config with ``op`` off, writing only under ``run_root/no-op``."""
    run = Path(run_root) / f"no-{op}"
    return override(config, augment=OFF[op],
                    train={"threads": threads or config.train.threads},
                    output={"run_dir": str(run), "onnx": str(run / "model.onnx"), "int8_onnx": "",
                            "version": f"{config.output.version}-no-{op}"})


def run_op(config: Config, prepared, op: str, run_root: Path, base: Path, threads: int | None,
           n_boot: int) -> dict[str, Any]:
    """Train (unless done) and compare one ablation on ``prepared``, the config's inputs and splits
    (an ablation changes neither); returns and writes the paired figures."""
    from galaxy_infer.model import Predictor
    from training.cli import train_and_export
    from training.experiments.compare import compare
    from training.experiments.robustness import SHIFTS

    variant = ablated(config, op, run_root, threads)
    model = Path(variant.output.onnx)
    if not model.exists():
        train_and_export(variant, pictures=False, prepared=prepared)
    n_threads = variant.train.threads
    results = compare(Predictor(base, batch_size=256, num_threads=n_threads).predict,
                      Predictor(model, batch_size=256, num_threads=n_threads).predict,
                      prepared, SHIFTS, n_boot)
    out = {"op": op, "off": OFF[op], "base": str(base), "candidate": str(model), "shifts": results}
    (model.parent / "compare.json").write_text(json.dumps(out, indent=1))
    return out


def summary(run_root: Path) -> str:
    """Markdown: per finished op, the figures that moved beyond the paired interval when it was off
    (sample size, shipped → without, the 95% paired interval of the difference)."""
    rows = ["| op off | worse / better | worse without it (it helped) | better without it (it cost) |",
            "|---|---|---|---|"]
    for op in OFF:
        file = Path(run_root) / f"no-{op}" / "compare.json"
        if not file.exists():
            continue
        moved: dict[str, list[str]] = {"worse": [], "better": []}
        for shift, figures in json.loads(file.read_text())["shifts"].items():
            for key, f in figures.items():
                if f["verdict"] in moved:
                    lo, hi = f["ci95"]
                    moved[f["verdict"]].append(f"{shift} {key} ({f['n']}) {f['base']:.3f} → {f['candidate']:.3f} "
                                               f"[{lo:+.3f}, {hi:+.3f}]")
        rows.append(f"| {op} | {len(moved['worse'])} / {len(moved['better'])} | {'<br>'.join(moved['worse']) or '-'} | "
                    f"{'<br>'.join(moved['better']) or '-'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="training/configs/default.toml")
    parser.add_argument("--base", type=Path, default=Path("galaxy_infer/models/default.onnx"),
                        help="a model of the full recipe (default: the shipped one)")
    parser.add_argument("--op", action="append", choices=list(OFF), default=[])
    parser.add_argument("--threads", type=int, help="override train.threads (1 lets two ops train side by side)")
    parser.add_argument("--run-root", type=Path, default=Path("runs/ablate"))
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--summary", action="store_true", help="only print the table of the finished ops")
    args = parser.parse_args(argv)
    if not args.summary:
        if not args.op:
            parser.error("name at least one --op (or --summary)")
        from training.train import prepare

        config = load_config(args.config)
        prepared = prepare(config)
        for op in args.op:
            run_op(config, prepared, op, args.run_root, args.base, args.threads, args.n_boot)
    print(summary(args.run_root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
