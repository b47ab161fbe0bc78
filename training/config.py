"""Training configuration, read from a TOML file (``tomllib``); every field has a default."""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from galaxy_infer.preprocess import Recipe


@dataclass
class DataConfig:
    root: str = "../shared/data"
    sets: list[str] = field(default_factory=lambda: ["gz1_sdss", "gz_kaggle_spiral", "gz2_votes", "gzdecals_rings"])
    oversample: dict[str, int] = field(default_factory=dict)
    """Repeat a (small) set's training images this many times per epoch."""
    negation_weights: dict[str, float] = field(default_factory=dict)
    """Scale a set's negated-event loss (e.g. a noisy 'not X' label)."""
    odd_rates: dict[str, dict[str, str]] = field(default_factory=dict)
    """Sets whose labels never say 'odd = no': ``{set: {stratum: gz2_votes simple class}}``; their
    galaxies of each stratum are held, on average, to that class's volunteer 'odd = yes' rate
    (:mod:`training.priors`)."""
    limit: int = 0
    """Use at most this many images per set (0 = all): for tests and quick trials."""
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    cache_dir: str = "runs/cache"
    tree: str = "gz2"
    """The decision tree the model answers (a built-in tree's name: gz2, gz_desi, gz_euclid, ...);
    it sets the model's outputs, the loss, the metrics, the flags and the exported metadata."""
    catalogs: list[dict[str, str]] = field(default_factory=list)
    """Label tables of your own on ``tree``: ``{ path = "votes.csv", name = "mine", file_column = "file" }``
    with Zoobot-style ``{question}_{answer}`` vote counts or ``_fraction`` columns (see
    :func:`training.labels.read_vote_catalog`); read beside ``sets``."""


@dataclass
class ModelConfig:
    name: str = "compact"
    width: int = 12
    dropout: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 8
    aug_strength: float = 1.0
    exact_fraction: float = 0.0
    """Share of samples augmented by right-angle rotations and flips only (no resampling blur)."""
    negation_weight: float = 1.0
    odd_rate_weight: float = 1.0
    """Weight of the batch-mean 'odd = yes' rate loss of ``data.odd_rates``."""
    threads: int = 2
    seed: int = 0
    max_minutes: float = 0.0
    """Stop after this much wall time (0 = no limit); the best checkpoint is kept."""


@dataclass
class OutputConfig:
    run_dir: str = "runs/default"
    onnx: str = ""
    """Also export the best model here (e.g. galaxy_infer/models/default.onnx)."""
    int8_onnx: str = ""
    """Also write an int8-quantized copy of the exported model here (see :mod:`training.quantize`)."""
    name: str = "gz2-compact"
    version: str = "1.0.0"


@dataclass
class SurveyAugment:
    """Which survey differences to imitate in training, and how far (0 or empty = off)."""

    p: float = 0.5
    """Probability that each enabled operation is applied to a sample."""
    grey: float = 0.0
    """Share of samples rendered grey: one random band (or a random mix) copied to every channel."""
    colour: float = 0.0
    """Standard deviation of the per-band log gain (colour/band balance)."""
    blur: float = 0.0
    """Largest Gaussian PSF sigma, in input pixels (uniform from 0)."""
    noise: float = 0.0
    """Largest added sky-noise sigma on the [0, 1] scale (log-uniform from a twentieth of it)."""
    dim: float = 1.0
    """Smallest flux factor above the background (log-uniform up to 1); 1 = off."""
    framing: tuple[float, ...] = ()
    """``(smallest, largest)`` apparent size factor, replacing the ±25% zoom; borders then take
    the image's border level. ``()`` keeps the standard zoom."""

    def enabled(self) -> bool:
        return bool(self.grey or self.colour or self.blur or self.noise or self.dim < 1)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    recipe: Recipe = field(default_factory=Recipe)
    augment: SurveyAugment = field(default_factory=SurveyAugment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(cls, values: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**values)


def from_dict(raw: dict[str, Any]) -> Config:
    unknown = set(raw) - {"data", "model", "train", "output", "recipe", "augment"}
    if unknown:
        raise ValueError(f"unknown config sections: {sorted(unknown)}")
    return Config(
        data=_section(DataConfig, raw.get("data", {})),
        model=_section(ModelConfig, raw.get("model", {})),
        train=_section(TrainConfig, raw.get("train", {})),
        output=_section(OutputConfig, raw.get("output", {})),
        recipe=Recipe.from_dict(raw.get("recipe", {})),
        augment=_section(SurveyAugment, {k: tuple(v) if isinstance(v, list) else v
                                         for k, v in raw.get("augment", {}).items()}),
    )


def read_toml(path: str | Path) -> dict[str, Any]:
    """A config file's sections; ``base = "other.toml"`` (relative to the file) starts from that
    file's sections and replaces only the keys given here, so a candidate config states only how it
    differs from the recipe it varies."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = read_toml(path.parent / base)
    for name, values in raw.items():
        merged[name] = {**merged.get(name, {}), **values}
    return merged


def load_config(path: str | Path) -> Config:
    return from_dict(read_toml(path))


def override(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy with some fields of some sections replaced, e.g. ``override(c, train={"lr": 1e-3})``."""
    out = replace(config)
    for name, values in sections.items():
        setattr(out, name, replace(getattr(out, name), **values))
    return out
