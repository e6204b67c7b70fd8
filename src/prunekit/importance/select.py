"""From unit scores to the masks compaction removes: how many units each layer keeps, and which.

`scope="layer"` keeps the same fraction in every layer; `scope="global"` ranks every layer's units together (the
scores must then be comparable across layers, as gradient and activation scores are per unit of loss or of
signal). Every layer keeps at least `minimum` units (1 by default, so no layer's attention or FFN is emptied by
accident). Grouped-query attention: the same number of query heads in every KV group, so the result compacts.
"""

from __future__ import annotations

import torch

from prunekit.importance.scores import UnitScores
from prunekit.importance.sublayers import SublayerScores
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


def sublayer_masks(
    masks: MaskSet, scores: SublayerScores, *, sublayers: float = 0.0, rows: float = 0.0, min_rows: int = 1
) -> MaskSet:
    """`masks` (changed in place and returned) plus: the fraction `sublayers` of all attention and FFN sublayers
    dropped, the lowest-scoring of one ranking over the model (at least one attention and one FFN sublayer stay),
    and the fraction `rows` of the output rows of every remaining sublayer removed, lowest scores first. A dropped
    sublayer's head / neuron masks are cleared (nothing of it is left to mask)."""
    ranked = sorted(scores.sublayers, key=lambda k: (scores.sublayers[k], k))
    goal = round(sublayers * len(ranked))
    left = {kind: sum(1 for k in ranked if k[1] == kind) for kind in ("attention", "ffn")}
    dropped: set[tuple[int, str]] = set()
    for key in ranked:
        if len(dropped) >= goal:
            break
        if left[key[1]] > 1:
            dropped.add(key)
            left[key[1]] -= 1
    for layer, kind in dropped:
        lm = masks.layer(layer)
        if kind == "attention":
            lm.drop_attention, lm.heads, lm.attn_rows = True, None, None
        else:
            lm.drop_ffn, lm.neurons, lm.ffn_rows = True, None, None
    if rows > 0:
        for (layer, kind), score in scores.rows.items():
            if (layer, kind) in dropped:
                continue
            keep = topk_mask(score, kept_count(score.numel(), rows, min(min_rows, score.numel())))
            setattr(masks.layer(layer), "attn_rows" if kind == "attention" else "ffn_rows", keep)
    return masks
