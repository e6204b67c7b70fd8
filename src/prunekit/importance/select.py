"""From unit scores to the masks compaction removes: how many units each layer keeps, and which.

`scope="layer"` keeps the same fraction in every layer; `scope="global"` ranks every layer's units together (the
scores must then be comparable across layers, as gradient and activation scores are per unit of loss or of
signal). Every layer keeps at least `minimum` units (1 by default, so no layer's attention or FFN is emptied by
accident). Grouped-query attention: the same number of query heads in every KV group, so the result compacts.
"""

from __future__ import annotations

import torch

from prunekit.importance.scores import UnitScores
from prunekit.masks import MaskSet
from prunekit.patterns import kept_count, topk_mask
from prunekit.topology import Topology


def keep_counts(scores: list[torch.Tensor], sparsity: float, scope: str, minimum: int) -> list[int]:
    """Units kept per layer for a removed fraction `sparsity`: per layer, or from one global ranking."""
    if scope == "layer":
        return [kept_count(s.numel(), sparsity, min(minimum, s.numel())) for s in scores]
    if not scores:
        return []
    allv = torch.cat([s.flatten().float() for s in scores])
    keep = topk_mask(allv, kept_count(allv.numel(), sparsity))
    counts, start = [], 0
    for s in scores:
        counts.append(max(min(minimum, s.numel()), int(keep[start : start + s.numel()].sum())))
        start += s.numel()
    return counts


def select_heads(score: torch.Tensor, keep: int, num_kv: int) -> torch.Tensor:
    """The `keep` best query heads; with grouped-query attention the best of each KV group, the same number in
    each group (rounded from `keep`, at least one when `keep` > 0)."""
    if num_kv <= 0 or score.numel() == num_kv:
        return topk_mask(score, keep)
    group = score.numel() // num_kv
    per = min(group, max(0, round(keep / num_kv)))
    if keep > 0 and per == 0:
        per = 1
    return torch.stack([topk_mask(g, per) for g in score.view(num_kv, group)]).flatten()


def unit_masks(
    topo: Topology,
    scores: UnitScores,
    *,
    heads: float | None = None,
    neurons: float | None = None,
    scope: str = "layer",
    min_heads: int = 1,
    min_neurons: int = 1,
) -> MaskSet:
    """Masks removing the fraction `heads` of query heads and `neurons` of FFN neurons with the lowest scores
    (None: that kind is not masked; 0: masked, all kept)."""
    masks = MaskSet()
    if heads is not None:
        layers = [b for b in topo.blocks if b.index in scores.heads]
        counts = keep_counts([scores.heads[b.index] for b in layers], heads, scope, min_heads)
        for b, k in zip(layers, counts, strict=True):
            masks.layer(b.index).heads = select_heads(scores.heads[b.index], k, b.attention.num_kv_heads)
    if neurons is not None:
        layers = [b for b in topo.blocks if b.index in scores.neurons]
        counts = keep_counts([scores.neurons[b.index] for b in layers], neurons, scope, min_neurons)
        for b, k in zip(layers, counts, strict=True):
            masks.layer(b.index).neurons = topk_mask(scores.neurons[b.index], k)
    return masks
