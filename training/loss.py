"""The loss over the decision tree: learns from full vote fractions and partial labels at once.

For each question, cross-entropy of the predicted conditional fractions (per-question softmax of
the logits) against the target fractions, masked where the target is NaN and weighted by how
often the question was reached according to the target itself (its known parents' fractions;
1 for hard labels). Samples with a negated event (a conjunction of answers known to be false)
add ``w * -log(1 - P(event))`` (``w`` the value stored in the event row, 1 by default), P being the product of the answers' predicted conditional fractions.
"""
from __future__ import annotations

import torch

from galaxy_infer.schema import GZ2, Schema


def question_weights(targets: torch.Tensor, schema: Schema = GZ2) -> torch.Tensor:
    """``(n, n_questions)`` probability of reaching each question implied by the (partial) targets.

    An unknown parent answer counts as 1: a label that states an answer implies its question was reached.
    """
    filled = torch.nan_to_num(targets, nan=1.0)
    weights = []
    position = {q.name: i for i, q in enumerate(schema.questions)}
    for q in schema.questions:
        if q.asked_after is not None:
            parent, answer = q.asked_after
            w = weights[position[parent]] * filled[:, schema.answer_index(parent, answer)]
        elif q.asked_unless is not None:
            parent, answer = q.asked_unless
            known = ~torch.isnan(targets[:, schema.answer_index(parent, answer)])
            w = weights[position[parent]] * torch.where(
                known, 1.0 - torch.nan_to_num(targets[:, schema.answer_index(parent, answer)]), 1.0)
        else:
            w = torch.ones(targets.shape[0], dtype=targets.dtype, device=targets.device)
        weights.append(w)
    return torch.stack(weights, dim=1)


def log_fractions(logits: torch.Tensor, schema: Schema = GZ2) -> torch.Tensor:
    """Per-question log-softmax: ``(n, n_answers)`` log conditional fractions."""
    return torch.cat([torch.log_softmax(logits[:, s], dim=1) for s in schema.slices.values()], dim=1)


def tree_loss(logits: torch.Tensor, targets: torch.Tensor, negated: torch.Tensor | None = None,
              negation_weight: float = 1.0, schema: Schema = GZ2) -> torch.Tensor:
    """Mean over samples of the masked, weighted per-question cross-entropy (+ negated events)."""
    logp = log_fractions(logits, schema)
    weights = question_weights(targets, schema)
    known = ~torch.isnan(targets)
    t = torch.nan_to_num(targets, nan=0.0)
    total = logits.new_zeros(logits.shape[0])
    for i, s in enumerate(schema.slices.values()):
        mask = known[:, s].all(dim=1)
        ce = -(t[:, s] * logp[:, s]).sum(dim=1)
        total = total + torch.where(mask, ce * weights[:, i], torch.zeros_like(ce))
    if negated is not None:
        # a row's non-zero entries mark the event's answers; their value is the sample's weight
        has_event = negated.sum(dim=1) > 0
        log_event = (logp * (negated > 0).to(logp.dtype)).sum(dim=1)
        # log(1 - exp(x)) computed stably; clamp keeps it finite when the event is near certain
        neg = -torch.log(-torch.expm1(log_event.clamp(max=-1e-6)))
        total = total + negation_weight * negated.amax(dim=1) * torch.where(has_event, neg, torch.zeros_like(neg))
    return total.mean()
