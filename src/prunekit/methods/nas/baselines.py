"""Fixed-threshold baselines for the Pareto plot (METHODS.md 4e), applied to the fine-tuned dense model.

    heads      Michel et al. (2019): iteratively remove the least important heads (gate-gradient importance,
               normalised per layer, recomputed after every 10% of the heads) until the fraction is removed
    layers     layer dropping (Sajjad et al.): drop the top layers
    magnitude  one-shot magnitude pruning of heads and FFN neurons, the same fraction in every layer

Each gives a MaskSet per size (fraction of heads / layers / heads-and-neurons removed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.importance.magnitude import magnitude_masks
from prunekit.masks import MaskSet, merge
from prunekit.methods.nas.reorder import importance
from prunekit.topology import Topology

BASELINES = ("heads", "layers", "magnitude")


def check_baseline(name: str) -> str:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline '{name}': use one of {', '.join(BASELINES)}")
    return name


def michel_heads(
    model: nn.Module, topo: Topology, batches: Callable[[], Iterable[dict]], fractions: list[float], step: float = 0.1
) -> dict[float, MaskSet]:
    """Head masks at each removed fraction; units are KV groups (one head each without grouped-query attention)."""
    layers = [b for b in topo.blocks if b.attention is not None and b.attention.num_heads]
    keep = {b.index: torch.ones(b.attention.num_kv_heads, dtype=torch.bool) for b in layers}
    group = {b.index: b.attention.group_size for b in layers}
    total = sum(k.numel() for k in keep.values())
    out: dict[float, MaskSet] = {}
    for target in sorted(fractions):
        goal = min(total - 1, round(target * total))  # never every head of the model
        while total - sum(int(k.sum()) for k in keep.values()) < goal:
            q_keep = {i: k.repeat_interleave(group[i]) for i, k in keep.items()}
            hs, _ = importance(model, topo, batches(), heads_keep=q_keep)
            scores = []
            for i, k in keep.items():
                s = hs[i].view(k.numel(), group[i]).sum(1)
                s = s / (s.norm() + 1e-20)  # Michel et al.: normalise by layer
                scores += [(float(s[j]), i, j) for j in range(k.numel()) if k[j]]
            removed = total - sum(int(k.sum()) for k in keep.values())
            n = min(max(1, round(step * total)), goal - removed, len(scores) - 1)
            for _, i, j in sorted(scores)[:n]:
                keep[i][j] = False
        masks = MaskSet()
        for i, k in keep.items():
            masks.layer(i).heads = k.repeat_interleave(group[i]).clone()
        out[target] = masks
    return out


def drop_layers(topo: Topology, fractions: list[float]) -> dict[float, MaskSet]:
    """Drop the top round(fraction * L) blocks (at least one block stays)."""
    out = {}
    n = topo.num_layers
    for f in fractions:
        masks = MaskSet()
        for b in topo.blocks[n - min(n - 1, round(f * n)) :]:
            lm = masks.layer(b.index)
            lm.drop_attention, lm.drop_ffn = b.attention is not None, b.ffn is not None
        out[f] = masks
    return out


def magnitude(model: nn.Module, topo: Topology, fractions: list[float]) -> dict[float, MaskSet]:
    return {
        f: merge(
            magnitude_masks(model, topo=topo, pattern="head", sparsity=f, scope="layer"),
            magnitude_masks(model, topo=topo, pattern="neuron", sparsity=f, scope="layer"),
        )
        for f in fractions
    }
