"""Masks over a model's prunable structure: the currency every method pays in.

Structured masks (heads, neurons, hidden rows, whole sublayers) live per layer; fine-grained masks
(blocks, N:M, unstructured) live per linear weight, in (out_features, in_features) orientation.
Both expand to element masks of the weights, so a masked model and its compacted model compute the
same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.topology import AttentionSpec, Topology, describe, family_of, get_module, weight_view


@dataclass
class LayerMask:
    """Kept units of one block (True = kept). None means 'all kept'."""

    heads: torch.Tensor | None = None  # (num_heads,) query heads
    neurons: torch.Tensor | None = None  # (ffn width,)
    attn_rows: torch.Tensor | None = None  # (hidden,) dimensions the attention output writes
    ffn_rows: torch.Tensor | None = None  # (hidden,) dimensions the FFN output writes
    attn_cols: torch.Tensor | None = None  # (hidden,) dimensions q, k and v read (one index: they share the input)
    ffn_cols: torch.Tensor | None = None  # (hidden,) dimensions the FFN input projections read
    drop_attention: bool = False
    drop_ffn: bool = False

    def is_empty(self) -> bool:
        return not (
            self.drop_attention
            or self.drop_ffn
            or any(
                m is not None and not bool(m.all())
                for m in (self.heads, self.neurons, self.attn_rows, self.ffn_rows, self.attn_cols, self.ffn_cols)
            )
        )


@dataclass
class MaskSet:
    layers: dict[int, LayerMask] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> bool (out, in)
    patterns: dict[str, str] = field(default_factory=dict)  # module name -> "2:4", "32x32", "unstructured"

    def layer(self, i: int) -> LayerMask:
        return self.layers.setdefault(i, LayerMask())


def kv_heads_kept(heads: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """A KV head stays while any of its query heads stays (grouped-query attention)."""
    return heads.view(num_kv_heads, -1).any(dim=1)


def _rows_in_view(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """A full-width row mask restricted to the rows a (possibly already scattered) module computes."""
    index = getattr(module, "out_index", None)
    return rows[index] if index is not None else rows


def _cols_in_view(module: nn.Module, cols: torch.Tensor) -> torch.Tensor:
    """A full-width input mask restricted to the inputs a (possibly already gathering) module reads."""
    index = getattr(module, "in_index", None)
    return cols[index.to(cols.device)] if index is not None else cols


def attention_inputs(att: AttentionSpec | None) -> list[str]:
    """The linears that read the attention sublayer's input (q, k, v; GPT-2's one fused module); none when every
    head is gone."""
    if att is None or not att.num_heads:
        return []
    return [att.q] if att.fused_qkv else [att.q, att.k, att.v]


@torch.no_grad()
def live_columns(model: nn.Module, names: list[str], hidden: int) -> torch.Tensor:
    """(hidden,) bool: input dimensions some weight of `names` still reads (a non-zero entry in its column).
    A dimension every one of them has a zero column for can be gathered away exactly, whatever the biases."""
    live = torch.zeros(hidden, dtype=torch.bool)
    for name in names:
        module = get_module(model, name)
        col = (weight_view(module) != 0).any(dim=0).cpu()
        index = getattr(module, "in_index", None)
        live[index.cpu() if index is not None else torch.arange(col.numel())] |= col
    return live


def element_masks(model: nn.Module, masks: MaskSet, topo: Topology | None = None) -> dict[str, tuple]:
    """(weight mask (out, in), bias mask (out,)) per linear module: everything the masks zero."""
    topo = topo or describe(model)
    out: dict[str, list[torch.Tensor | None]] = {}

    def entry(name: str) -> list:
        if name not in out:
            w = weight_view(get_module(model, name))
            out[name] = [
                torch.ones(w.shape, dtype=torch.bool, device=w.device),
                torch.ones(w.shape[0], dtype=torch.bool, device=w.device),
            ]
        return out[name]

    def drop_out(name: str, keep: torch.Tensor) -> None:
        e = entry(name)
        e[0] &= keep.to(e[0].device)[:, None]
        e[1] &= keep.to(e[1].device)

    def drop_in(name: str, keep: torch.Tensor) -> None:
        e = entry(name)
        e[0] &= keep.to(e[0].device)[None, :]

    for i, lm in masks.layers.items():
        block = topo.blocks[i]
        att, ffn = block.attention, block.ffn
        if att is not None and att.num_heads and lm.heads is not None and not lm.drop_attention:
            heads = lm.heads.bool()
            kv = kv_heads_kept(heads, att.num_kv_heads)
            q_keep = heads.repeat_interleave(att.head_dim)
            kv_keep = kv.repeat_interleave(att.head_dim)
            if att.fused_qkv:
                drop_out(att.q, torch.cat([q_keep, kv_keep, kv_keep]))
            else:
                drop_out(att.q, q_keep)
                drop_out(att.k, kv_keep)
                drop_out(att.v, kv_keep)
            drop_in(att.o, q_keep)
        if att is not None and lm.attn_rows is not None and not lm.drop_attention:
            drop_out(att.o, _rows_in_view(get_module(model, att.o), lm.attn_rows.bool()))
        if lm.attn_cols is not None and not lm.drop_attention:
            for name in attention_inputs(att):
                drop_in(name, _cols_in_view(get_module(model, name), lm.attn_cols.bool()))
        if ffn is not None and lm.neurons is not None and not lm.drop_ffn:
            for name in ffn.inputs:
                drop_out(name, lm.neurons.bool())
            drop_in(ffn.output, lm.neurons.bool())
        if ffn is not None and lm.ffn_rows is not None and not lm.drop_ffn:
            drop_out(ffn.output, _rows_in_view(get_module(model, ffn.output), lm.ffn_rows.bool()))
        if ffn is not None and lm.ffn_cols is not None and not lm.drop_ffn:
            for name in ffn.inputs:
                drop_in(name, _cols_in_view(get_module(model, name), lm.ffn_cols.bool()))
    for name, m in masks.weights.items():
        e = entry(name)
        if m.shape != e[0].shape:
            raise UsageError(f"mask for '{name}' has shape {tuple(m.shape)}, the weight {tuple(e[0].shape)}")
        e[0] &= m.bool().to(e[0].device)
    return {k: (v[0], v[1]) for k, v in out.items()}


@torch.no_grad()
def zero_masked(model: nn.Module, masks: MaskSet, topo: Topology | None = None) -> None:
    """Write the masks into the weights (in place)."""
    for name, (wmask, bmask) in element_masks(model, masks, topo).items():
        module = get_module(model, name)
        weight_view(module).mul_(wmask.to(module.weight.dtype))
        if getattr(module, "bias", None) is not None:
            module.bias.mul_(bmask.to(module.bias.dtype))


class ForwardSwap:
    """Runs another module's forward in place of a module's own, until `remove()`."""

    def __init__(self, module: nn.Module, replacement: nn.Module) -> None:
        self.module = module
        module.forward = replacement.forward

    def remove(self) -> None:
        if "forward" in vars(self.module):
            del self.module.forward


def skip_hooks(model: nn.Module, masks: MaskSet, topo: Topology | None = None) -> list[ForwardSwap]:
    """Dropped sublayers in a masked (not compacted) model: their forward becomes the skip modules' one
    that compaction installs, so both compute the same."""
    topo = topo or describe(model)
    fam = family_of(model)
    handles = []
    for i, lm in masks.layers.items():
        block = get_module(model, topo.blocks[i].name)
        for dropped, spec in ((lm.drop_attention, fam.skip_attention), (lm.drop_ffn, fam.skip_ffn)):
            if dropped:
                handles += [ForwardSwap(block.get_submodule(rel), factory()) for rel, factory in spec]
    return handles


def apply_masks(model: nn.Module, masks: MaskSet, topo: Topology | None = None) -> list[ForwardSwap]:
    """Turn a dense model into the masked model: zeroed weights plus hooks for dropped sublayers."""
    topo = topo or describe(model)
    zero_masked(model, masks, topo)
    return skip_hooks(model, masks, topo)


def block_parameter_count(model: nn.Module, topo: Topology | None = None) -> tuple[int, int]:
    """(all, non-zero) weights and biases of the prunable linears of the blocks."""
    topo = topo or describe(model)
    total = nonzero = 0
    for name in topo.prunable_linears():
        for p in get_module(model, name).parameters(recurse=False):
            total += p.numel()
            nonzero += int(torch.count_nonzero(p))
    return total, nonzero


def sparsity_report(model: nn.Module, masks: MaskSet | None = None, topo: Topology | None = None) -> dict:
    """Per layer and total: parameters of the prunable linears, kept by the masks (or non-zero now)."""
    topo = topo or describe(model)
    emasks = element_masks(model, masks, topo) if masks is not None else {}
    layers, tot, kept = [], 0, 0
    for b in topo.blocks:
        lt = lk = 0
        for name in b.linears():
            module = get_module(model, name)
            w = weight_view(module)
            bias = getattr(module, "bias", None)
            lt += w.numel() + (bias.numel() if bias is not None else 0)
            if name in emasks:
                wm, bm = emasks[name]
                lk += int((wm & (w != 0)).sum()) + (int((bm & (bias != 0)).sum()) if bias is not None else 0)
            else:
                lk += int(torch.count_nonzero(w)) + (int(torch.count_nonzero(bias)) if bias is not None else 0)
        lm = masks.layers.get(b.index, LayerMask()) if masks else LayerMask()
        att = b.attention
        heads = (
            0
            if (att is None or lm.drop_attention)
            else (int(lm.heads.sum()) if lm.heads is not None else att.num_heads)
        )
        width = (
            0 if (b.ffn is None or lm.drop_ffn) else (int(lm.neurons.sum()) if lm.neurons is not None else b.ffn.width)
        )
        layers.append(
            {
                "layer": b.index,
                "params": lt,
                "kept": lk,
                "density": lk / lt if lt else 0.0,
                "heads": heads,
                "ffn_width": width,
            }
        )
        tot += lt
        kept += lk
    return {
        "layers": layers,
        "params": tot,
        "kept": kept,
        "density": kept / tot if tot else 0.0,
        "sparsity": 1 - kept / tot if tot else 0.0,
    }


def merge(*mask_sets: MaskSet) -> MaskSet:
    """Union of what several mask sets prune (a unit is kept only if every set keeps it)."""
    out = MaskSet()

    def both(a, b):
        return b if a is None else a if b is None else a & b

    for ms in mask_sets:
        for i, lm in ms.layers.items():
            cur = out.layer(i)
            cur.heads = both(cur.heads, lm.heads)
            cur.neurons = both(cur.neurons, lm.neurons)
            cur.attn_rows = both(cur.attn_rows, lm.attn_rows)
            cur.ffn_rows = both(cur.ffn_rows, lm.ffn_rows)
            cur.attn_cols = both(cur.attn_cols, lm.attn_cols)
            cur.ffn_cols = both(cur.ffn_cols, lm.ffn_cols)
            cur.drop_attention |= lm.drop_attention
            cur.drop_ffn |= lm.drop_ffn
        for name, m in ms.weights.items():
            out.weights[name] = both(out.weights.get(name), m.bool())
        out.patterns.update(ms.patterns)
    return out


@torch.no_grad()
def masks_from_zeros(model: nn.Module, topo: Topology | None = None) -> MaskSet:
    """Structure whose removal cannot change the output: heads whose output-projection columns are all
    zero, neurons whose output column is zero, hidden rows whose output row and bias are zero."""
    topo = topo or describe(model)
    masks = MaskSet()
    for b in topo.blocks:
        lm = masks.layer(b.index)
        a = b.attention
        if a is not None and a.num_heads:
            o = get_module(model, a.o)
            cols = weight_view(o).reshape(weight_view(o).shape[0], a.num_heads, a.head_dim)
            heads = cols.abs().sum((0, 2)) > 0
            if a.group_size > 1:  # only whole groups, or the same count per group, can go
                per = heads.view(a.num_kv_heads, -1)
                if len({int(x) for x in per.sum(1) if x > 0}) > 1:
                    heads = torch.ones_like(heads)
            lm.heads = heads
        if b.ffn is not None:
            lm.neurons = weight_view(get_module(model, b.ffn.output)).abs().sum(0) > 0
        for name, attr in ((a.o if a else None, "attn_rows"), (b.ffn.output if b.ffn else None, "ffn_rows")):
            if name is None:
                continue
            module = get_module(model, name)
            live = weight_view(module).abs().sum(1) > 0
            if getattr(module, "bias", None) is not None:
                live |= module.bias != 0
            full = torch.ones(topo.hidden_size, dtype=torch.bool)
            full[getattr(module, "out_index", torch.arange(live.numel()))] = live
            if getattr(module, "out_index", None) is not None:
                keep = torch.zeros(topo.hidden_size, dtype=torch.bool)
                keep[module.out_index[live]] = True
                full = keep
            setattr(lm, attr, full)
    return masks


def check_keeps_attention(model: nn.Module, masks: MaskSet | None) -> None:
    """Refuse a pruning target that removes every head of every layer (the model would have no attention).
    `compact` itself compacts any masks it is given; this guards what users ask for (CLI, recipes)."""
    if masks is None:
        return
    with_heads = {b.index for b in describe(model).blocks if b.attention is not None and b.attention.num_heads}
    headless = {
        i
        for i, lm in masks.layers.items()
        if lm.heads is not None and not lm.drop_attention and not bool(lm.heads.any())
    }
    if with_heads and headless >= with_heads:
        raise UsageError(
            "the pruning target removes every head of every layer, which leaves the model no attention: keep at "
            "least one head (lower the head sparsity, or keep min_heads at 1)"
        )


_LAYER_FIELDS = ("heads", "neurons", "attn_rows", "ffn_rows", "attn_cols", "ffn_cols")


def maskset_state(masks: MaskSet) -> dict[str, Any]:
    """A MaskSet as plain dicts of CPU tensors: what a checkpoint (torch.load(weights_only=True)) can hold."""
    layers = {}
    for i, lm in masks.layers.items():
        entry: dict[str, Any] = {f: getattr(lm, f).cpu().clone() for f in _LAYER_FIELDS if getattr(lm, f) is not None}
        entry["drop_attention"], entry["drop_ffn"] = lm.drop_attention, lm.drop_ffn
        layers[str(i)] = entry
    return {
        "layers": layers,
        "weights": {k: v.cpu().clone() for k, v in masks.weights.items()},
        "patterns": dict(masks.patterns),
    }


def maskset_from_state(state: dict[str, Any]) -> MaskSet:
    masks = MaskSet()
    for i, entry in state["layers"].items():
        masks.layers[int(i)] = LayerMask(
            **{f: entry[f].bool() for f in _LAYER_FIELDS if f in entry},
            drop_attention=bool(entry.get("drop_attention", False)),
            drop_ffn=bool(entry.get("drop_ffn", False)),
        )
    masks.weights = {k: v.bool() for k, v in state["weights"].items()}
    masks.patterns = dict(state["patterns"])
    return masks
