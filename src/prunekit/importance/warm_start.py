"""Learned importance scores (movement, MLPruning) started from importance measured on data.

Both methods learn a score per unit and keep the Top-k; from zero every unit ties, so the first masks are arbitrary
and the scores spend the first steps finding what one pass of calibration data already says. `data_unit_scores`
gives one score per query head, FFN neuron and output row of every layer (`unit_scores` / `sublayer_scores`), and
`rank_init` turns a layer's scores into starting values: the unit's rank scaled to [0, scale]. Ranks, not the raw
values, so heavy-tailed criteria (activation) and tiny ones (gradients) start alike; `scale` sets how many steps of
the learned signal it takes to overturn the data's order (with Adam, a score moves about its learning rate a step).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunekit.importance.scores import unit_scores
from prunekit.importance.sublayers import sublayer_scores
from prunekit.topology import Topology, describe

KINDS = ("heads", "neurons", "attn_rows", "ffn_rows")


def data_unit_scores(
    model: nn.Module,
    criterion: str,
    batches: Iterable[dict] | None,
    kinds: Iterable[str] = KINDS,
    topo: Topology | None = None,
) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, kind) -> scores of that layer's units of `kind` (query heads, neurons, attention / FFN output rows)."""
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown unit kinds {sorted(unknown)}: use {', '.join(KINDS)}")
    topo = topo or describe(model)
    data = None if criterion == "magnitude" or batches is None else list(batches)
    out: dict[tuple[int, str], torch.Tensor] = {}
    if kinds & {"heads", "neurons"}:
        units = unit_scores(model, criterion, data, topo)
        for kind, scores in (("heads", units.heads), ("neurons", units.neurons)):
            if kind in kinds:
                out.update({(i, kind): s for i, s in scores.items()})
    if kinds & {"attn_rows", "ffn_rows"}:
        coarse = sublayer_scores(model, criterion, data, topo)
        for (i, sub), s in coarse.rows.items():
            kind = "attn_rows" if sub == "attention" else "ffn_rows"
            if kind in kinds:
                out[(i, kind)] = s
    return out


def rank_init(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """Starting scores with the order of `scores`: the lowest 0, the highest `scale`, evenly spaced by rank (ties
    broken by position, as Top-k breaks them)."""
    n = scores.numel()
    ranks = torch.empty(n, dtype=torch.float32)
    ranks[torch.argsort(scores.flatten().float(), stable=True)] = torch.arange(n, dtype=torch.float32)
    return (ranks / max(n - 1, 1) * scale).view(scores.shape)
