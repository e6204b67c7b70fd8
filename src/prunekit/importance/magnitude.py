"""One-shot magnitude pruning at every granularity, so the substrate is usable on its own.

Weights by |w| (unstructured, N:M, B x B blocks by tile L2 norm); heads, neurons and hidden rows by
the L2 norm of the weights they own. Scope `global` ranks across all layers, `layer` within each
layer (N:M is per group by definition). Grouped-query attention keeps the same number of query
heads in every KV group, so the result always compacts.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.importance import UnitScores, keep_counts, unit_masks
from prunekit.importance.scores import magnitude_head_scores, magnitude_neuron_scores
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
    """One-shot magnitude pruning at one pattern (what `magnitude_masks` computes; the gradual `magnitude` method
    calls it at each mask update)."""

    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(
        "unstructured",
        description="What is pruned: unstructured | N:M (e.g. 2:4, keep N of every M inputs) | BxB (e.g. 32x32 "
        "blocks, by tile L2 norm) | head | neuron | row (by the L2 norm of the weights they own).",
    )
    sparsity: float = Field(
        0.5, description="Fraction removed (of the weights, or of the heads / neurons / rows); N:M ignores it."
    )
    scope: str = Field(
        "global",
        description="global: one ranking over all layers; layer: per matrix (fine-grained patterns) or per layer.",
    )
    pad_tail: bool = Field(
        False, description="N:M: keep a trailing partial group of inputs dense instead of refusing the shape."
    )
    min_heads: int = Field(1, description="Attention heads every layer keeps (0 allows emptying a layer's attention).")
    min_neurons: int = Field(1, description="FFN neurons every layer keeps (0 allows emptying a layer's FFN).")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return str(parse_pattern(v))

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        return check_sparsity(v)

    _scope = field_validator("scope")(check_scope)


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


def magnitude_masks(
    model: nn.Module, config: MagnitudeConfig | None = None, topo: Topology | None = None, **kwargs
) -> MaskSet:
    """Masks pruning the lowest-magnitude structures (or weights) to the requested sparsity."""
    cfg = config or MagnitudeConfig(**kwargs)
    topo = topo or describe(model)
    pattern = parse_pattern(cfg.pattern)
    masks = MaskSet()
    if pattern.kind == "head":
        scores = UnitScores(magnitude_head_scores(model, topo), {})
        masks = unit_masks(topo, scores, heads=cfg.sparsity, scope=cfg.scope, min_heads=cfg.min_heads)
    elif pattern.kind == "neuron":
        scores = UnitScores({}, magnitude_neuron_scores(model, topo))
        masks = unit_masks(topo, scores, neurons=cfg.sparsity, scope=cfg.scope, min_neurons=cfg.min_neurons)
    elif pattern.kind == "row":
        pairs = _row_scores(model, topo)
        flat = [s for pair in pairs for s in pair]
        counts = keep_counts(flat, cfg.sparsity, cfg.scope, 0)
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
