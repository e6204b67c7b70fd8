"""One-shot magnitude pruning at every granularity, so the substrate is usable on its own.

Weights by |w| (unstructured, N:M, B x B blocks by tile L2 norm); heads, neurons and hidden rows by
the L2 norm of the weights they own. Scope `global` ranks across all layers, `layer` within each
layer (N:M is per group by definition). Grouped-query attention keeps the same number of query
heads in every KV group, so the result always compacts.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from prunekit.errors import UsageError
from prunekit.masks import MaskSet
from prunekit.patterns import (
    block_scores,
    check_sparsity,
    expand_blocks,
    kept_count,
    nm_mask,
    parse_pattern,
    topk_mask,
)
from prunekit.topology import Topology, describe, get_module, weight_view


def check_scope(v: str) -> str:
    """global ranks across all layers, layer within each (shared by every method with a `scope` field)."""
    if v not in ("global", "layer"):
        raise ValueError("scope must be 'global' or 'layer'")
    return v


class MagnitudeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = "unstructured"
    sparsity: float = 0.5
    scope: str = "global"
    pad_tail: bool = False
    min_heads: int = 1  # never empties a layer's attention unless set to 0
    min_neurons: int = 1

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return str(parse_pattern(v))

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        return check_sparsity(v)

    _scope = field_validator("scope")(check_scope)


def _head_scores(model: nn.Module, topo: Topology) -> list[torch.Tensor]:
    scores = []
    for b in topo.blocks:
        a = b.attention
        if a is None or a.num_heads == 0:
            scores.append(torch.zeros(0))
            continue
        dh = a.head_dim
        q = weight_view(get_module(model, a.q)).detach()
        o = weight_view(get_module(model, a.o)).detach()
        qs = q[: a.num_heads * dh].reshape(a.num_heads, dh, -1).pow(2).sum((1, 2))
        os_ = o.reshape(o.shape[0], a.num_heads, dh).pow(2).sum((0, 2))
        if a.fused_qkv:
            kv = q[a.num_heads * dh :].reshape(2, a.num_kv_heads, dh, -1).pow(2).sum((0, 2, 3))
        else:
            k = weight_view(get_module(model, a.k)).detach().reshape(a.num_kv_heads, dh, -1)
            v = weight_view(get_module(model, a.v)).detach().reshape(a.num_kv_heads, dh, -1)
            kv = k.pow(2).sum((1, 2)) + v.pow(2).sum((1, 2))
        # a KV head's weights are shared by its group: split them evenly over the group's query heads
        scores.append((qs + os_ + kv.repeat_interleave(a.group_size) / a.group_size).sqrt())
    return scores


def _neuron_scores(model: nn.Module, topo: Topology) -> list[torch.Tensor]:
    scores = []
    for b in topo.blocks:
        if b.ffn is None:
            scores.append(torch.zeros(0))
            continue
        s = weight_view(get_module(model, b.ffn.output)).detach().pow(2).sum(0)
        for name in b.ffn.inputs:
            s = s + weight_view(get_module(model, name)).detach().pow(2).sum(1)
        scores.append(s.sqrt())
    return scores


def _row_scores(model: nn.Module, topo: Topology) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for b in topo.blocks:
        pair = []
        for name in (b.attention.o if b.attention else None, b.ffn.output if b.ffn else None):
            full = torch.zeros(topo.hidden_size)
            if name is not None:
                module = get_module(model, name)
                rows = weight_view(module).detach().pow(2).sum(1).sqrt()
                index = getattr(module, "out_index", torch.arange(rows.numel()))
                full[index] = rows
            pair.append(full)
        out.append(tuple(pair))
    return out


def _counts(scores: list[torch.Tensor], sparsity: float, scope: str, minimum: int) -> list[int]:
    """Units kept per layer: per layer, or from one global ranking."""
    if scope == "layer":
        return [kept_count(s.numel(), sparsity, min(minimum, s.numel())) for s in scores]
    allv = torch.cat([s.flatten() for s in scores])
    keep = topk_mask(allv, kept_count(allv.numel(), sparsity))
    counts, start = [], 0
    for s in scores:
        counts.append(max(min(minimum, s.numel()), int(keep[start : start + s.numel()].sum())))
        start += s.numel()
    return counts


def _gqa_heads(score: torch.Tensor, keep: int, num_kv: int) -> torch.Tensor:
    """Top heads per KV group, the same number in each group (rounded from the layer's count)."""
    group = score.numel() // num_kv
    per = min(group, max(0, round(keep / num_kv)))
    if keep > 0 and per == 0:
        per = 1
    return torch.stack([topk_mask(g, per) for g in score.view(num_kv, group)]).flatten()


def magnitude_masks(
    model: nn.Module, config: MagnitudeConfig | None = None, topo: Topology | None = None, **kwargs
) -> MaskSet:
    """Masks pruning the lowest-magnitude structures (or weights) to the requested sparsity."""
    cfg = config or MagnitudeConfig(**kwargs)
    topo = topo or describe(model)
    pattern = parse_pattern(cfg.pattern)
    masks = MaskSet()
    if pattern.kind == "head":
        scores = _head_scores(model, topo)
        for b, s, k in zip(topo.blocks, scores, _counts(scores, cfg.sparsity, cfg.scope, cfg.min_heads), strict=True):
            if s.numel():
                a = b.attention
                masks.layer(b.index).heads = _gqa_heads(s, k, a.num_kv_heads) if a.group_size > 1 else topk_mask(s, k)
    elif pattern.kind == "neuron":
        scores = _neuron_scores(model, topo)
        for b, s, k in zip(topo.blocks, scores, _counts(scores, cfg.sparsity, cfg.scope, cfg.min_neurons), strict=True):
            if s.numel():
                masks.layer(b.index).neurons = topk_mask(s, k)
    elif pattern.kind == "row":
        pairs = _row_scores(model, topo)
        flat = [s for pair in pairs for s in pair]
        counts = _counts(flat, cfg.sparsity, cfg.scope, 0)
        for j, b in enumerate(topo.blocks):
            lm = masks.layer(b.index)
            if b.attention is not None:
                lm.attn_rows = topk_mask(flat[2 * j], counts[2 * j])
            if b.ffn is not None:
                lm.ffn_rows = topk_mask(flat[2 * j + 1], counts[2 * j + 1])
    elif pattern.kind == "layer":
        raise UsageError("pattern 'layer' has no magnitude criterion: use the layer-dropping baseline or NAS search")
    else:
        masks.weights = _fine_grained(model, topo, pattern, cfg)
        masks.patterns = {name: str(pattern) for name in masks.weights}
    return masks


def _fine_grained(model: nn.Module, topo: Topology, pattern, cfg: MagnitudeConfig) -> dict[str, torch.Tensor]:
    names = topo.prunable_linears()
    weights = {n: weight_view(get_module(model, n)).detach() for n in names}
    if pattern.kind == "nm":
        return {n: nm_mask(w, pattern.n, pattern.m, cfg.pad_tail) for n, w in weights.items()}
    if pattern.kind == "block":
        scores = {n: block_scores(w, pattern.block) for n, w in weights.items()}
        expand = lambda m: expand_blocks(m, pattern.block)  # noqa: E731
    else:
        scores = {n: w.abs() for n, w in weights.items()}
        expand = lambda m: m  # noqa: E731
    if cfg.scope == "layer":
        return {n: expand(topk_mask(s, kept_count(s.numel(), cfg.sparsity))) for n, s in scores.items()}
    allv = torch.cat([s.flatten() for s in scores.values()])
    keep = topk_mask(allv, kept_count(allv.numel(), cfg.sparsity))
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = expand(keep[start : start + s.numel()].view_as(s))
        start += s.numel()
    return out
