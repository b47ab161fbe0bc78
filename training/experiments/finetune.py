"""Fine-tune an exported ``compact`` model for a few hundred steps and score it, clean and under survey shifts.

A cheap probe of what an augmentation does when a full training does not fit the CPU time at
hand: the exported weights (BatchNorm folded into the convolutions) are loaded into the network
with its BatchNorm layers as fixed identities plus the folded bias, then trained on the training
splits with and without the config's ``[augment]`` operations for the same number of steps (the
control arm separates the effect of the augmentation from that of fine-tuning itself). Test
splits are never trained on, so the scores stay held out. The result is not a shippable model:
``make train`` would not reproduce it.

``python -m training.experiments.finetune --config training/configs/default.toml --model galaxy_infer/models/default.onnx
--steps 60 --out runs/finetune``
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from training.augment import random_affine, survey_augment
from training.config import Config, load_config
from training.loss import tree_loss
from training.models import CompactCNN
from training.experiments.robustness import shifted_scores, table
from training.train import make_model, predict, prepare, stack

log = logging.getLogger(__name__)


def load_exported_compact(path: Path | str, config: Config) -> CompactCNN:
    """The network of an exported ``compact`` model, BatchNorm layers set to ``x + folded bias``."""
    model = make_model(config)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    head_weight, head_bias = weights.pop("head.1.weight"), weights.pop("head.1.bias")
    convs = [w for w in weights.values() if w.ndim == 4]  # in graph order, each followed by its bias
    biases = [w for w in weights.values() if w.ndim == 1]
    with torch.no_grad():
        for block, w, b in zip(model.features, convs, biases, strict=True):
            conv, bn = block[0], block[1]
            conv.weight.copy_(torch.tensor(w))
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.tensor(b))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        model.head[1].weight.copy_(torch.tensor(head_weight))
        model.head[1].bias.copy_(torch.tensor(head_bias))
    return model.eval()


def fine_tune(model: CompactCNN, config: Config, prepared, steps: int, lr: float, survey: bool, seed: int = 0) -> CompactCNN:
    """``steps`` AdamW steps on the training splits; BatchNorm stays fixed (eval mode)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, targets, negated, _ = stack(prepared.splits["train"], config.data.oversample, config.data.negation_weights)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.train.weight_decay)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    for step in range(steps):
        idx = torch.randint(0, len(images), (config.train.batch_size,), generator=generator)
        x = random_affine(images[idx], config.train.aug_strength, generator=generator,
                          zoom_range=config.augment.framing if survey else ())
        if survey:
            x = survey_augment(x, config.augment, generator)
        loss = tree_loss(model(x), targets[idx], negated[idx], config.train.negation_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 10 == 0:
            log.warning("%s step %d loss %.4f", "survey" if survey else "control", step, loss.item())
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a config with an [augment] section")
    parser.add_argument("--model", required=True, help="the exported compact model to start from")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", default="runs/finetune")
    parser.add_argument("--n-boot", type=int, default=100, help="bootstrap resamples per figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    config = load_config(args.config)
    torch.set_num_threads(config.train.threads)
    prepared = prepare(config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shifts = {}
    for arm, survey in (("survey", True), ("control", False)):
        model = fine_tune(load_exported_compact(args.model, config), config, prepared, args.steps, args.lr, survey)
        shifts[arm] = shifted_scores(lambda x, m=model: predict(m, x), prepared, n_boot=args.n_boot)
        (out / f"{arm}.json").write_text(json.dumps(shifts[arm], indent=1))
    start = load_exported_compact(args.model, config)
    shifts["start"] = shifted_scores(lambda x: predict(start, x), prepared, n_boot=args.n_boot)
    (out / "shifts.json").write_text(json.dumps(shifts, indent=1))
    print(table(shifts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
