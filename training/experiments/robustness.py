"""Score a model on the held-out test splits as other surveys would show them.

Each survey shift is one fixed transformation of the preprocessed test inputs, made with the
functions that :func:`training.augment.survey_augment` draws at random in training: a grey
rendering of one band or of all, another colour balance, a wider PSF, shallower data, fainter
galaxies, galaxies shown smaller or larger in the frame, and all of those together roughly as an
artificially redshifted galaxy (FERENGI-like) looks. The figures are the same as on clean inputs,
with their bootstrap intervals, so a model trained with an augmentation can be compared with one
trained without on the shift that augmentation imitates.

``python -m training.experiments.robustness --config C --model model.onnx [--model other.onnx] --out shifts.json``
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from training.augment import add_noise, band_gains, dim, grey, psf_blur, rescale
from training.config import load_config
from training.metrics import set_metrics

Shift = Callable[[torch.Tensor], torch.Tensor]
NOISE_SEED = 17


def _per_sample(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.full((len(x),), value, dtype=x.dtype)


def _weights(*w: float) -> Shift:
    return lambda x: grey(x, torch.tensor(w, dtype=x.dtype).expand(len(x), -1))


def _gains(*g: float) -> Shift:
    return lambda x: band_gains(x, torch.tensor(g, dtype=x.dtype).expand(len(x), -1))


def _noise(sigma: float) -> Shift:
    return lambda x: add_noise(x, _per_sample(sigma)(x), torch.Generator().manual_seed(NOISE_SEED))


def _far(x: torch.Tensor) -> torch.Tensor:
    x = rescale(x, 0.5)
    x = psf_blur(x, _per_sample(1.0)(x))
    x = dim(x, _per_sample(0.5)(x))
    return _noise(0.03)(x)


SHIFTS: dict[str, Shift] = {
    "clean": lambda x: x,
    "grey_middle_band": _weights(0.0, 1.0, 0.0),
    "grey_mean": _weights(1 / 3, 1 / 3, 1 / 3),
    "colour_redder": _gains(1.3, 1.0, 0.75),
    "colour_bluer": _gains(0.75, 1.0, 1.3),
    "psf_blur_1.5px": lambda x: psf_blur(x, _per_sample(1.5)(x)),
    "noise_0.05": _noise(0.05),
    "dimmer_x0.4": lambda x: dim(x, _per_sample(0.4)(x)),
    "smaller_x0.5": lambda x: rescale(x, 0.5),
    "larger_x1.6": lambda x: rescale(x, 1.6),
    "far_ferengi_like": _far,
}
"""Name -> transformation of a ``(n, 3, H, W)`` batch; smaller_x0.5 shows the galaxy at half its size."""

HEADLINE = [("gz1_sdss", "three_way_accuracy"), ("gz1_sdss", "merger_auc"), ("gz_kaggle_spiral", "spiral_auc"),
            ("gzdecals_rings", "ring_auc"), ("gz2_votes", "rmse_ratio")]


def shifted_scores(logits_of: Callable[[np.ndarray], np.ndarray], prepared, shifts: dict[str, Shift] | None = None,
                   n_boot: int = 200) -> dict[str, dict[str, Any]]:
    """``{shift: {set: figures}}`` on the test splits, ``logits_of`` mapping inputs to logits."""
    mean = prepared.train_mean_unconditional()
    out: dict[str, dict[str, Any]] = {}
    for name, shift in (shifts or SHIFTS).items():
        out[name] = {}
        for part in prepared.splits["test"]:
            x = shift(torch.from_numpy(part.images)).numpy().astype(np.float32)
            out[name][part.name] = set_metrics(part.labelled, logits_of(x), mean, n_boot=n_boot)
    return out


def draw_mistakes(logits_of: Callable[[np.ndarray], np.ndarray], prepared, folder: Path,
                  shifts: tuple[str, ...] = ("clean", "far_ferengi_like")) -> None:
    """Mosaics of the surest test mistakes (:func:`training.evaluate.confident_mistakes`) under some shifts."""
    from training import plots
    from training.evaluate import confident_mistakes

    for name in shifts:
        test = {}
        for part in prepared.splits["test"]:
            x = SHIFTS[name](torch.from_numpy(part.images)).numpy().astype(np.float32)
            test[part.name] = (replace(part, images=x), logits_of(x))
        mistakes = confident_mistakes({k: v[0] for k, v in test.items()}, {k: v[1] for k, v in test.items()})
        for set_name, items in mistakes.items():
            plots.mosaic(items, folder / f"mistakes_{name}_{set_name}.png", title=f"{set_name} test, {name}: surest mistakes")


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: one row per shift, the headline figures of each model (value [95% interval])."""
    models = list(results)
    head = "| shift | " + " | ".join(f"{s}.{k} ({m})" for s, k in HEADLINE for m in models) + " |"
    rows = [head, "|" + "---|" * (1 + len(HEADLINE) * len(models))]
    for shift in next(iter(results.values())):
        cells = []
        for s, k in HEADLINE:
            for m in models:
                f = results[m][shift].get(s, {})
                v, ci = f.get(k), f.get("ci95", {}).get(k)
                cells.append("n/a" if v is None else f"{v:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        rows.append(f"| {shift} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from galaxy_infer.model import Predictor
    from training.train import prepare

    parser = argparse.ArgumentParser(prog="python -m training.experiments.robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the TOML config whose splits to score")
    parser.add_argument("--model", action="append", required=True, help="an ONNX model (repeat to compare)")
    parser.add_argument("--out", help="write all figures here as JSON")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--pictures", help="draw each model's surest test mistakes, clean and far, into this folder")
    args = parser.parse_args(argv)
    prepared = prepare(load_config(args.config))
    results = {}
    for path in args.model:
        predictor = Predictor(path, batch_size=256, num_threads=2)
        results[path] = shifted_scores(predictor.predict, prepared, n_boot=args.n_boot)
        if args.pictures:
            draw_mistakes(predictor.predict, prepared, Path(args.pictures) / Path(path).stem)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
