"""Volunteers' population rates for the 'anything odd?' question, where a set's labels never say 'no'.

Every label on the 424-pixel SDSS and DECaLS sets that touches the odd question says 'odd = yes'
(GZ1 mergers, Kaggle spirals, rings); no galaxy there is ever labelled 'odd = no'. Trained on that,
the model answers 'odd = yes' with probability 0.99 for every GZ1 elliptical, where GZ2
volunteers say yes about one time in seven, and 1.00 for every DECaLS-rendered cutout (the ring
set's non-rings, featured face-on disks, included). The Galaxy Zoo 2 vote fractions give the missing
information as a rate rather than per galaxy: the mean 'odd = yes' fraction of the gz2_votes
training galaxies of each simple class (E, S). A set's galaxies of a class get that rate, and the
loss asks the mean prediction over them in each batch to match it (learning from label
proportions), which leaves the model free to say which of them are odd.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from galaxy_infer.schema import GZ2
from training.data import SplitSet
from training.metrics import columns

RATE_SOURCE = "gz2_votes"
ODD_YES = GZ2.answer_index("odd", "yes")


def class_rates(source: SplitSet) -> dict[str, float]:
    """Mean 'odd = yes' vote fraction of the source's galaxies per stratum (gz2_votes: simple class)."""
    odd = source.labelled.targets[:, ODD_YES]
    strata = source.labelled.strata
    return {str(k): float(np.nanmean(odd[strata == k])) for k in np.unique(strata)}


def sample_rates(parts: list[SplitSet], mapping: Mapping[str, Mapping[str, str]]) -> list[np.ndarray]:
    """Per part, each sample's population rate (NaN where none applies).

    ``mapping[set][stratum]`` names the source stratum whose rate a sample of that set and stratum
    gets, e.g. ``{"gz1_sdss": {"elliptical": "E", "edge_on": "S"}}``; rates come from the
    ``gz2_votes`` part among ``parts`` (the training split, so no held-out vote is used).
    """
    out = [np.full(len(p.labelled), np.nan, np.float32) for p in parts]
    if not mapping:
        return out
    source = next((p for p in parts if p.name == RATE_SOURCE), None)
    if source is None:
        raise ValueError(f"data.odd_rates needs the {RATE_SOURCE} set among the training sets")
    rates = class_rates(source)
    for part, rate in zip(parts, out):
        for stratum, source_stratum in mapping.get(part.name, {}).items():
            if source_stratum not in rates:
                raise ValueError(f"data.odd_rates: {RATE_SOURCE} has no stratum {source_stratum!r} "
                                 f"(has {sorted(rates)})")
            matched = part.labelled.strata == stratum
            if not matched.any():
                raise ValueError(f"data.odd_rates: {part.name} has no stratum {stratum!r} "
                                 f"(has {sorted(map(str, np.unique(part.labelled.strata)))})")
            rate[matched] = rates[source_stratum]
    return out


def proportion_loss(logits: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the batch's mean predicted 'odd = yes' against its samples' mean rate."""
    has = ~torch.isnan(rates)
    if not bool(has.any()):
        return logits.new_zeros(())
    odd = torch.softmax(logits[has][:, GZ2.slices["odd"]], dim=1)[:, 0].mean().clamp(1e-6, 1 - 1e-6)
    target = rates[has].mean()
    return -(target * torch.log(odd) + (1 - target) * torch.log1p(-odd))


def odd_answers(prepared, logits: dict[str, dict[str, np.ndarray]], thresholds: Mapping[str, float],
                splits: tuple[str, ...] = ("val", "test")) -> dict[str, Any]:
    """What the model answers to 'anything odd?' per set and stratum on held-out galaxies, beside the
    volunteers' rate the loss holds that stratum to: mean P(odd = yes) and the share each flag marks.

    A pooled or per-set mean can hide one class paying for another (face-on disks too odd,
    ellipticals too plain), which is why the figures are per stratum. ``prepared`` is a
    :class:`training.train.Prepared`; thresholds are the ones the model ships.
    """
    source = prepared.by_name("train").get(RATE_SOURCE)
    rates = class_rates(source) if source is not None else {}
    out: dict[str, Any] = {"splits": list(splits), "volunteer_rates": rates, "sets": {}}
    for name in {p.name for split in splits for p in prepared.splits[split]}:
        parts = [(p, logits[split][name]) for split in splits for p in prepared.splits[split] if p.name == name]
        strata = np.concatenate([p.labelled.strata for p, _ in parts]).astype(str)
        c = columns(np.concatenate([x for _, x in parts]))
        out["sets"][name] = {
            str(k): {"n": int((strata == k).sum()),
                     "p_odd": float(c["odd_yes_fraction"][strata == k].mean()),
                     **{f"{feature}_flag": float((c[f"odd_{feature}_prob"][strata == k] >= t).mean())
                        for feature, t in thresholds.items() if feature in ("merger", "ring")}}
            for k in np.unique(strata)}
    return out
