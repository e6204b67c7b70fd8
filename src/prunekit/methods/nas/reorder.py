"""Importance reordering (METHODS.md 4a, Beyond): sort each layer's heads and neurons by importance, so that a
prefix mask keeps the most important units.

Importance is Michel et al.'s (2019) gate gradient: |d loss / d gate| of a per-head (per-neuron) gate on the
unit's output, summed over batches of training data, with the fine-tuned model. The reordering is a permutation
of the weights each unit owns (Q/K/V rows, output-projection columns; FFN input rows, output columns), so the
network computes exactly the same function. Grouped-query attention: KV groups move with their query heads and
query heads move only within their group. MPNet's relative-position bias is shared by all layers, so a
permuted layer selects its heads' bias through the family's heads hook, as compaction does for kept heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.importance import unit_scores
from prunekit.masks import LayerMask, MaskSet
from prunekit.topology import Topology, family_of, get_module, weight_view
from prunekit.topology.families import head_feature_index


@dataclass
class UnitOrder:
    """Per layer: new position -> original index, for query heads and for neurons (None: unchanged)."""

    heads: list[torch.Tensor | None]
    neurons: list[torch.Tensor | None]

    @classmethod
    def identity(cls, num_layers: int) -> UnitOrder:
        return cls([None] * num_layers, [None] * num_layers)

    def to_json(self) -> dict:
        as_list = lambda xs: [None if x is None else x.tolist() for x in xs]  # noqa: E731
        return {"heads": as_list(self.heads), "neurons": as_list(self.neurons)}

    @classmethod
    def from_json(cls, d: dict) -> UnitOrder:
        as_t = lambda xs: [None if x is None else torch.tensor(x, dtype=torch.long) for x in xs]  # noqa: E731
        return cls(as_t(d["heads"]), as_t(d["neurons"]))

    def inverse(self) -> UnitOrder:
        inv = lambda xs: [None if x is None else torch.argsort(x) for x in xs]  # noqa: E731
        return UnitOrder(inv(self.heads), inv(self.neurons))


def importance(
    model: nn.Module,
    topo: Topology,
    batches: Iterable[dict],
    heads_keep: dict[int, torch.Tensor] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(head scores, neuron scores) per layer: the importance layer's `sensitivity`, sum over batches of
    |d loss / d gate|, with the heads `heads_keep` gates off first."""
    scores = unit_scores(model, "sensitivity", batches, topo, heads_keep=heads_keep)
    return scores.heads, scores.neurons


def order_from_scores(
    topo: Topology, head_scores: dict[int, torch.Tensor], neuron_scores: dict[int, torch.Tensor]
) -> UnitOrder:
    """Most important first; for grouped-query attention groups by their summed score, heads within a group."""
    order = UnitOrder.identity(topo.num_layers)
    for b in topo.blocks:
        a = b.attention
        if a is not None and a.num_heads and b.index in head_scores:
            s = head_scores[b.index].float().view(a.num_kv_heads, a.group_size)
            groups = torch.argsort(-s.sum(1), stable=True)
            within = torch.argsort(-s, dim=1, stable=True)
            order.heads[b.index] = torch.cat([g * a.group_size + within[g] for g in groups.tolist()])
        if b.ffn is not None and b.index in neuron_scores:
            order.neurons[b.index] = torch.argsort(-neuron_scores[b.index].float(), stable=True)
    return order


def _rows(module: nn.Module, idx: torch.Tensor) -> None:
    w = weight_view(module)
    w.copy_(w[idx.to(w.device)].clone())
    if getattr(module, "bias", None) is not None:
        module.bias.copy_(module.bias[idx.to(module.bias.device)].clone())


def _cols(module: nn.Module, idx: torch.Tensor) -> None:
    w = weight_view(module)
    w.copy_(w[:, idx.to(w.device)].clone())


def check_group_order(perm: torch.Tensor, num_kv: int) -> torch.Tensor:
    """The KV-group order a query-head permutation implies; raises unless groups move whole."""
    group = perm.numel() // num_kv
    owners = perm.view(num_kv, group) // group
    if not bool((owners == owners[:, :1]).all()) or sorted(owners[:, 0].tolist()) != list(range(num_kv)):
        raise ValueError("a grouped-query head permutation must move whole KV groups (query heads within a group)")
    return owners[:, 0]


@torch.no_grad()
def permute(model: nn.Module, topo: Topology, order: UnitOrder) -> None:
    """Reorder the units in place (new unit j = original unit order[j]); the function is unchanged."""
    fam = family_of(model)
    for b in topo.blocks:
        a, perm = b.attention, order.heads[b.index]
        if a is not None and a.num_heads and perm is not None:
            groups = check_group_order(perm, a.num_kv_heads)
            q_idx = head_feature_index(perm, a.head_dim)
            kv_idx = head_feature_index(groups, a.head_dim)
            if a.fused_qkv:
                q_w, kv_w = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
                _rows(get_module(model, a.q), torch.cat([q_idx, kv_idx + q_w, kv_idx + q_w + kv_w]))
            else:
                _rows(get_module(model, a.q), q_idx)
                _rows(get_module(model, a.k), kv_idx)
                _rows(get_module(model, a.v), kv_idx)
            _cols(get_module(model, a.o), q_idx)
            fam.heads_kept(get_module(model, a.core), perm, permutation=True)
        perm = order.neurons[b.index]
        if b.ffn is not None and perm is not None:
            for name in b.ffn.inputs:
                _rows(get_module(model, name), perm)
            _cols(get_module(model, b.ffn.output), perm)


def unpermute(model: nn.Module, topo: Topology, order: UnitOrder) -> None:
    """Undo `permute` (back to the original unit order, and for MPNet no index left behind)."""
    permute(model, topo, order.inverse())


def to_original(masks, order: UnitOrder):
    """Masks over reordered units as masks over the original units (what a model in original order needs)."""
    out = MaskSet(weights=dict(masks.weights), patterns=dict(masks.patterns))
    for i, lm in masks.layers.items():
        new = LayerMask(drop_attention=lm.drop_attention, drop_ffn=lm.drop_ffn)
        for attr, perm in (("heads", order.heads[i]), ("neurons", order.neurons[i])):
            m = getattr(lm, attr)
            if m is not None and perm is not None:
                o = torch.zeros_like(m)
                o[perm] = m
                m = o
            setattr(new, attr, m)
        out.layers[i] = new
    return out
