"""Images -> cached model inputs, and seeded stratified splits.

Inputs are made by exactly the inference path, ``preprocess(read_cutout(path, recipe).pixels,
recipe)``, once per image, and cached as ``.npy`` under the run cache folder keyed by the recipe
and the file list, so that every epoch reuses them.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from galaxy_infer.preprocess import Recipe, preprocess
from galaxy_infer.readers import read_cutout
from training.labels import LabelledSet

SPLITS = ("train", "val", "test")


def load_input(path: str, recipe: Recipe) -> np.ndarray:
    """One cutout -> ``(C, H, W)`` float32 model input, as inference computes it."""
    return preprocess(read_cutout(path, recipe).pixels, recipe)


def cached_inputs(labelled: LabelledSet, recipe: Recipe, cache_dir: Path | None) -> np.ndarray:
    """All inputs of a set, ``(n, C, H, W)`` float32, from the cache when it is there."""
    key = hashlib.sha256((recipe.to_json() + json.dumps(labelled.paths)).encode()).hexdigest()[:16]
    file = Path(cache_dir) / f"{labelled.name}-{key}.npy" if cache_dir else None
    if file is not None and file.exists():
        return np.load(file)
    out = np.empty((len(labelled), recipe.channels, recipe.input_size, recipe.input_size), np.float32)
    for i, path in enumerate(labelled.paths):
        out[i] = load_input(path, recipe)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".tmp.npy", dir=file.parent)  # one per writer: runs may share a cache
        with os.fdopen(fd, "wb") as f:
            np.save(f, out)
        os.replace(tmp, file)
    return out


def split_indices(strata: np.ndarray, seed: int, val: float = 0.15, test: float = 0.15) -> dict[str, np.ndarray]:
    """Seeded train/val/test indices stratified on ``strata`` (plain random if a class is too small)."""
    index = np.arange(len(strata))

    def _split(idx: np.ndarray, size: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        labels = strata[idx]
        _, counts = np.unique(labels, return_counts=True)
        stratify = labels if counts.min() >= 2 and len(counts) > 1 else None
        return train_test_split(idx, test_size=size, random_state=seed + salt, stratify=stratify)

    rest, test_idx = _split(index, test, 0)
    train_idx, val_idx = _split(rest, val / (1 - test), 1)
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


@dataclass
class SplitSet:
    """One labelled set's part of a split, with its cached inputs."""

    labelled: LabelledSet
    images: np.ndarray

    @property
    def name(self) -> str:
        return self.labelled.name


def split_sets(sets: list[LabelledSet], inputs: list[np.ndarray], seed: int, val: float = 0.15,
               test: float = 0.15) -> dict[str, list[SplitSet]]:
    """Split every set on its own strata, so each split holds every set in proportion."""
    out: dict[str, list[SplitSet]] = {s: [] for s in SPLITS}
    for labelled, images in zip(sets, inputs):
        for split, idx in split_indices(labelled.strata, seed, val, test).items():
            out[split].append(SplitSet(labelled.subset(idx), images[idx]))
    return out


def summary(splits: dict[str, list[SplitSet]]) -> dict[str, dict[str, int]]:
    """How many images each set contributes to each split (goes into the model metadata)."""
    return {s.name: {split: len(next(x for x in splits[split] if x.name == s.name).labelled) for split in SPLITS}
            for s in splits["train"]}
