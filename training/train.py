"""The training loop: mixed labelled sets, tree loss, augmentation, early stopping, checkpoints.

``prepare`` reads the sets, caches their inputs and splits them; ``fit`` trains, writing
``last.pt`` every epoch (``resume`` continues from it) and ``best.pt`` whenever validation loss
improves; training stops after ``patience`` epochs without improvement, at ``epochs`` or at
``max_minutes``.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from galaxy_infer.schema import GZ2, Schema
from galaxy_infer.trees import get_tree
from training.augment import random_affine, survey_augment
from training.config import Config
from training.data import SplitSet, cached_inputs, split_sets
from training.labels import TREE_SETS, LabelledSet, read_vote_catalog
from training.loss import tree_loss
from training.metrics import survey_prevalence, unconditional_targets
from training.models import build_model
from training.priors import proportion_loss, sample_rates

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Splits with cached inputs, ready for training and evaluation."""

    splits: dict[str, list[SplitSet]]
    tree: Schema = GZ2

    def by_name(self, split: str) -> dict[str, SplitSet]:
        return {s.name: s for s in self.splits[split]}

    def train_mean_unconditional(self) -> np.ndarray | None:
        """Mean Kaggle-style target of the gz2 votes training images (the RMSE baseline)."""
        gz2 = self.by_name("train").get("gz2_votes")
        return None if gz2 is None else unconditional_targets(gz2.labelled.targets).mean(axis=0)

    def survey_prevalence(self) -> dict[str, float]:
        """How common each odd feature is among the gz2 votes training galaxies (:func:`survey_prevalence`)."""
        gz2 = self.by_name("train").get("gz2_votes")
        return survey_prevalence(gz2.labelled if gz2 is not None else None)


def read_sets(config: Config) -> list[LabelledSet]:
    """The shared sets named in the config (those readable on its tree) and its label catalogs."""
    root, tree = Path(config.data.root), get_tree(config.data.tree)
    readers = TREE_SETS.get(tree.name, {})
    unknown = [name for name in config.data.sets if name not in readers]
    if unknown:
        raise ValueError(f"sets {unknown} cannot be read on tree {tree.name} (readable: {sorted(readers) or 'none'}); "
                         "give labels on this tree as [[data.catalogs]]")
    loaded = [readers[name](root / name) for name in config.data.sets]
    for catalog in config.data.catalogs:
        extra = set(catalog) - {"path", "name", "file_column"}
        if extra or "path" not in catalog:
            raise ValueError(f"a data.catalogs entry needs 'path' and may have 'name', 'file_column'; got {sorted(catalog)}")
        loaded.append(read_vote_catalog(catalog["path"], tree, catalog.get("name"), catalog.get("file_column", "file")))
    names = [s.name for s in loaded]
    if len(set(names)) < len(names):
        raise ValueError(f"two label sets share a name in {names}; give each catalog its own 'name'")
    sets = []
    for labelled in loaded:
        if config.data.limit and len(labelled) > config.data.limit:
            rng = np.random.default_rng(config.data.seed)
            labelled = labelled.subset(np.sort(rng.choice(len(labelled), config.data.limit, replace=False)))
        sets.append(labelled)
    return sets


def prepare(config: Config) -> Prepared:
    sets = read_sets(config)
    cache = Path(config.data.cache_dir) if config.data.cache_dir else None
    inputs = [cached_inputs(s, config.recipe, cache) for s in sets]
    return Prepared(split_sets(sets, inputs, config.data.seed, config.data.val_fraction, config.data.test_fraction),
                    get_tree(config.data.tree))


def stack(parts: list[SplitSet], oversample: dict[str, int] | None = None,
          negation_weights: dict[str, float] | None = None,
          odd_rates: dict[str, dict[str, str]] | None = None) -> tuple[torch.Tensor, ...]:
    """Concatenate sets into (images, targets, negated, odd rates), repeating oversampled ones.

    A set's negated events are scaled by its ``negation_weights`` entry (the loss reads the weight
    from the event row); odd rates are NaN except where ``odd_rates`` gives one (:mod:`training.priors`).
    """
    oversample, negation_weights = oversample or {}, negation_weights or {}
    reps = [max(1, int(oversample.get(p.name, 1))) for p in parts]
    rates = sample_rates(parts, odd_rates or {})
    images = np.concatenate([np.repeat(p.images, r, axis=0) for p, r in zip(parts, reps)])
    targets = np.concatenate([np.repeat(p.labelled.targets, r, axis=0) for p, r in zip(parts, reps)])
    negated = np.concatenate([np.repeat(p.labelled.negated * np.float32(negation_weights.get(p.name, 1.0)), r, axis=0)
                              for p, r in zip(parts, reps)])
    odd = np.concatenate([np.repeat(rate, r) for rate, r in zip(rates, reps)])
    return torch.from_numpy(images), torch.from_numpy(targets), torch.from_numpy(negated), torch.from_numpy(odd)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def predict(model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Logits for preprocessed images, in eval mode, no augmentation."""
    model.eval()
    x = torch.as_tensor(images)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size]))
    return torch.cat(out).numpy() if out else np.zeros((0, _n_outputs(model)), np.float32)


def _n_outputs(model: torch.nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def evaluate_loss(model: torch.nn.Module, parts: list[SplitSet], negation_weight: float) -> dict[str, float]:
    """Validation tree loss per set and overall (mean over sets, so small sets count equally)."""
    out = {}
    for p in parts:
        logits = torch.from_numpy(predict(model, p.images))
        out[p.name] = float(tree_loss(logits, torch.from_numpy(p.labelled.targets),
                                      torch.from_numpy(p.labelled.negated), negation_weight, p.labelled.tree))
    out["mean"] = float(np.mean(list(out.values())))
    return out


def warmup_cosine(total_steps: int, warmup: float = 0.1) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup`` of the steps, then cosine decay to 1% at the end.

    Stateless (a function of the step), so a resumed run with more epochs just stretches it.
    """
    def factor(step: int) -> float:
        w = max(1, int(warmup * total_steps))
        if step < w:
            return (step + 1) / w
        progress = min(1.0, (step - w) / max(1, total_steps - w))
        return 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * progress))
    return factor


def make_model(config: Config) -> torch.nn.Module:
    return build_model(config.model.name, in_channels=config.recipe.channels, width=config.model.width,
                       dropout=config.model.dropout, n_outputs=get_tree(config.data.tree).n_answers)


def fit(config: Config, prepared: Prepared, resume: bool = False,
        report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train; returns the history and where the best checkpoint is."""
    t = config.train
    torch.set_num_threads(t.threads)
    seed_everything(t.seed)
    run = Path(config.output.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    images, targets, negated, odd_rates = stack(prepared.splits["train"], config.data.oversample,
                                                config.data.negation_weights, config.data.odd_rates)
    model = make_model(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(images) / t.batch_size)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(t.epochs * steps_per_epoch))
    state = {"epoch": 0, "best": float("inf"), "best_epoch": -1, "history": [], "wall_s": 0.0}
    last = run / "last.pt"
    if resume and last.exists():
        ckpt = torch.load(last, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["rng"])
        log.warning("resumed from %s at epoch %d", last, state["epoch"])
    generator = torch.Generator().manual_seed(t.seed + state["epoch"])
    started = time.perf_counter() - state["wall_s"]
    while state["epoch"] < t.epochs:
        epoch = state["epoch"]
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total, count = 0.0, 0
        for i in range(0, len(order), t.batch_size):
            idx = order[i:i + t.batch_size]
            if len(idx) < 2:
                continue
            x = random_affine(images[idx], t.aug_strength, generator=generator, exact_fraction=t.exact_fraction,
                              zoom_range=config.augment.framing)
            if config.augment.enabled():
                x = survey_augment(x, config.augment, generator)
            logits = model(x)
            loss = tree_loss(logits, targets[idx], negated[idx], t.negation_weight, prepared.tree)
            if config.data.odd_rates:
                loss = loss + t.odd_rate_weight * proportion_loss(logits, odd_rates[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += loss.item() * len(idx)
            count += len(idx)
        val = evaluate_loss(model, prepared.splits["val"], t.negation_weight)
        state["epoch"] = epoch + 1
        state["wall_s"] = time.perf_counter() - started
        row = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_loss": val["mean"],
               "val_loss_by_set": val, "lr": scheduler.get_last_lr()[0], "wall_s": state["wall_s"]}
        state["history"].append(row)
        if val["mean"] < state["best"]:
            state["best"], state["best_epoch"] = val["mean"], epoch + 1
            torch.save({"model": model.state_dict(), "config": config.to_dict(), "epoch": epoch + 1}, run / "best.pt")
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state, "rng": torch.get_rng_state(),
                    "config": config.to_dict()}, last)
        log.warning("epoch %d train %.4f val %.4f (best %.4f @%d) %.0fs", epoch + 1, row["train_loss"],
                    val["mean"], state["best"], state["best_epoch"], state["wall_s"])
        if report is not None:
            report(row)
        if epoch + 1 - state["best_epoch"] >= t.patience:
            log.warning("early stop: no improvement for %d epochs", t.patience)
            break
        if t.max_minutes and state["wall_s"] > 60 * t.max_minutes:
            log.warning("stopping at the %.0f minute limit", t.max_minutes)
            break
    (run / "history.json").write_text(json.dumps(state["history"], indent=1))
    return {"history": state["history"], "best_epoch": state["best_epoch"], "best_val_loss": state["best"],
            "wall_s": state["wall_s"], "checkpoint": str(run / "best.pt")}


def load_checkpoint(config: Config, path: Path | str) -> torch.nn.Module:
    model = make_model(config)
    model.load_state_dict(torch.load(path, weights_only=False)["model"])
    return model.eval()
