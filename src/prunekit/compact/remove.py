"""Physical removal of masked structure: smaller GEMMs, same function.

Compaction first writes every mask into the weights, then slices heads and neurons out of the
linears, wraps row-pruned output projections in scatter modules, makes the input projections (q/k/v, the
FFN's) gather the hidden dimensions they still read, and swaps dropped sublayers for skip modules. The
result computes what the masked model computes (checked by `check_equal`).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunekit.compact.structure import structure_masks, uniform_config_update
from prunekit.core.errors import UsageError
from prunekit.masks import (
    LayerMask,
    MaskSet,
    apply_masks,
    attention_inputs,
    kv_heads_kept,
    live_columns,
    zero_masked,
)
from prunekit.patterns import parse_pattern
from prunekit.topology import Topology, describe, family_of, get_module, weight_view
from prunekit.topology.base import AttentionSpec, is_conv1d, set_module
from prunekit.topology.families import Family, head_feature_index
from prunekit.topology.modules import (
    EmptyAttention,
    GatherConv1D,
    GatherLinear,
    PrunedConv1D,
    ScatterConv1D,
    ScatterLinear,
)

# what an input gather may replace: plain linears (or ones gathering already); a scattering, packed or
# parametrized module is something else
_GATHERABLE = (nn.Linear, GatherLinear, Conv1D, PrunedConv1D, GatherConv1D)
# patterns whose groups run along a weight's inputs: removing columns would break them (N:M storage, block kernel)
_INPUT_LAYOUT = ("nm", "block")


class GatherRules(NamedTuple):
    """What input gathers need to know beyond a layer's masks."""

    hidden: int
    patterns: dict[str, str]  # the masks' fine-grained patterns, by module name
    detect: bool  # also remove input columns that are zero in every linear of a group


def _new_like(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A linear of the same kind as `module` holding `weight` (given as (out, in))."""
    out_f, in_f = weight.shape
    index = getattr(module, "out_index", None)
    gathers = getattr(module, "in_index", None) is not None
    if is_conv1d(module):
        if index is not None:
            new = ScatterConv1D(in_f, out_f, module.full_features)
        elif gathers:
            new = GatherConv1D(in_f, out_f, module.full_in_features)
        else:
            new = PrunedConv1D(out_f, in_f)
        new.weight = nn.Parameter(weight.T.contiguous(), requires_grad=module.weight.requires_grad)
    else:
        if index is not None:
            new = ScatterLinear(in_f, out_f, module.full_features, bias=bias is not None)
        elif gathers:
            new = GatherLinear(in_f, out_f, module.full_in_features, bias=bias is not None)
        else:
            new = nn.Linear(in_f, out_f, bias=bias is not None)
        new.weight = nn.Parameter(weight.contiguous(), requires_grad=module.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous(), requires_grad=module.bias.requires_grad)
    new.to(device=weight.device)
    return new


def slice_linear(
    module: nn.Module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None
) -> nn.Module:
    w = weight_view(module).detach()
    b = module.bias.detach() if getattr(module, "bias", None) is not None else None
    index = getattr(module, "out_index", None)
    in_index = getattr(module, "in_index", None)
    if out_idx is not None:
        out_idx = out_idx.to(w.device)
        w, b = w[out_idx], (b[out_idx] if b is not None else None)
    if in_idx is not None:
        w = w[:, in_idx.to(w.device)]
    new = _new_like(module, w, b)
    if index is not None:
        new.out_index = index[out_idx] if out_idx is not None else index.clone()
    if in_index is not None:
        new.in_index = in_index[in_idx.to(in_index.device)] if in_idx is not None else in_index.clone()
    return new


def scatter_rows(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep only the output rows in `keep` (a full-width bool mask), scattering them into the residual."""
    index = getattr(module, "out_index", None)
    full = module.full_features if index is not None else weight_view(module).shape[0]
    current = index if index is not None else torch.arange(full, device=keep.device)
    local = torch.nonzero(keep.to(current.device)[current]).flatten()
    w = weight_view(module).detach()[local]
    b = module.bias.detach()[local] if getattr(module, "bias", None) is not None else None
    if is_conv1d(module):
        new = ScatterConv1D(w.shape[1], w.shape[0], full)
        new.weight = nn.Parameter(w.T.contiguous())
        new.bias = nn.Parameter(b.contiguous())
    else:
        new = ScatterLinear(w.shape[1], w.shape[0], full, bias=b is not None)
        new.weight = nn.Parameter(w.contiguous())
        if b is not None:
            new.bias = nn.Parameter(b.contiguous())
    new.out_index = current[local].clone()
    return new.to(w.device)


def gather_cols(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep only the input columns in `keep` (a full-width bool mask): the module reads just those dimensions of
    its full-width input. Bias unchanged; composes with an earlier gather."""
    if type(module) not in _GATHERABLE:
        raise UsageError(f"an input gather replaces a plain linear, got {type(module).__name__}")
    index = getattr(module, "in_index", None)
    w = weight_view(module).detach()
    full = module.full_in_features if index is not None else w.shape[1]
    current = index if index is not None else torch.arange(full, device=w.device)
    local = torch.nonzero(keep.to(current.device)[current]).flatten()
    w = w[:, local.to(w.device)]
    b = module.bias.detach() if getattr(module, "bias", None) is not None else None
    grad = module.weight.requires_grad
    if is_conv1d(module):
        new = GatherConv1D(w.shape[1], w.shape[0], full)
        new.weight = nn.Parameter(w.T.contiguous(), requires_grad=grad)
    else:
        new = GatherLinear(w.shape[1], w.shape[0], full, bias=b is not None)
        new.weight = nn.Parameter(w.contiguous(), requires_grad=grad)
    if b is not None:
        new.bias = nn.Parameter(b.clone(), requires_grad=module.bias.requires_grad)
    new.in_index = current[local].clone()
    return new.to(w.device)


def _gather_group(model: nn.Module, names: list[str], keep: torch.Tensor | None, rules: GatherRules, what: str) -> None:
    """Make every linear of one sublayer's input group (q/k/v, or the FFN inputs) read only the kept dimensions:
    those in `keep` (given) and, with zero-column detection on, those some weight of the group still reads."""
    if not names:
        return
    modules = [get_module(model, n) for n in names]
    laid_out = [n for n in names if n in rules.patterns and _input_layout(rules.patterns[n])]
    odd = [f"{n} ({type(m).__name__})" for n, m in zip(names, modules, strict=True) if type(m) not in _GATHERABLE]
    if keep is not None:
        keep = keep.bool().cpu()
        if not bool(keep.all()) and (laid_out or odd):
            why = f"{laid_out} have N:M or block patterns along their inputs" if laid_out else f"{odd} are not plain"
            raise UsageError(f"{what} asks to remove input dimensions, but {why}: an input gather cannot apply")
    if rules.detect and not laid_out and not odd:
        live = live_columns(model, names, rules.hidden)
        keep = live if keep is None else keep & live
    if keep is None:
        return
    for name, module in zip(names, modules, strict=True):
        index = getattr(module, "in_index", None)
        if not bool((keep[index.cpu()] if index is not None else keep).all()):
            set_module(model, name, gather_cols(module, keep))


def _input_layout(text: str) -> bool:
    try:
        return parse_pattern(text).kind in _INPUT_LAYOUT
    except UsageError:
        return False


def _check_gqa(att: AttentionSpec, heads: torch.Tensor, layer: int) -> int:
    per_group = heads.view(att.num_kv_heads, -1).sum(dim=1)
    kept = per_group[per_group > 0]
    if kept.numel() and not bool((kept == kept[0]).all()):
        raise UsageError(
            f"layer {layer}: kept query heads per KV group are {per_group.tolist()}; grouped-query attention "
            "needs the same number in every kept group (prune whole groups, or query heads uniformly per group)"
        )
    return int(kept[0]) if kept.numel() else 0


def _compact_heads(model: nn.Module, fam: Family, att: AttentionSpec, heads: torch.Tensor, layer: int) -> None:
    heads = heads.bool().cpu()
    if bool(heads.all()):
        return
    group = _check_gqa(att, heads, layer)
    q_heads = torch.nonzero(heads).flatten()
    kv = torch.nonzero(kv_heads_kept(heads, att.num_kv_heads)).flatten()
    q_idx = head_feature_index(q_heads, att.head_dim)
    kv_idx = head_feature_index(kv, att.head_dim)
    o = get_module(model, att.o)
    if q_heads.numel() == 0:
        core_rel, out_name, tuple_len = fam.empty_core
        empty_o = slice_linear(o, in_idx=q_idx)
        if out_name is None:  # the projection lives outside the core (BERT): keep it there, zero-width
            set_module(model, att.o, empty_o)
            set_module(model, att.core, EmptyAttention(None, None, tuple_len))
        else:
            set_module(model, att.core, EmptyAttention(empty_o, out_name, tuple_len))
        return
    if att.fused_qkv:
        width = att.num_heads * att.head_dim
        set_module(
            model,
            att.q,
            slice_linear(get_module(model, att.q), out_idx=torch.cat([q_idx, kv_idx + width, kv_idx + 2 * width])),
        )
    else:
        set_module(model, att.q, slice_linear(get_module(model, att.q), out_idx=q_idx))
        set_module(model, att.k, slice_linear(get_module(model, att.k), out_idx=kv_idx))
        set_module(model, att.v, slice_linear(get_module(model, att.v), out_idx=kv_idx))
    set_module(model, att.o, slice_linear(o, in_idx=q_idx))
    core = get_module(model, att.core)
    fam.head_attrs(core, int(q_heads.numel()), int(kv.numel()), att.head_dim)
    fam.heads_kept(core, q_heads)
    del group


def _compact_layer(model: nn.Module, fam: Family, topo: Topology, i: int, lm: LayerMask, rules: GatherRules) -> None:
    block = topo.blocks[i]
    block_module = get_module(model, block.name)
    att, ffn = block.attention, block.ffn
    if lm.drop_attention and att is not None:
        for rel, factory in fam.skip_attention:
            setattr(block_module, rel, factory())
    elif att is not None:
        if lm.heads is not None and att.num_heads:
            _compact_heads(model, fam, att, lm.heads, i)
        if lm.attn_rows is not None and not bool(lm.attn_rows.all()):
            set_module(model, att.o, scatter_rows(get_module(model, att.o), lm.attn_rows.bool()))
        heads_left = att.num_heads if lm.heads is None else int(lm.heads.sum())
        if heads_left:  # no head left: q, k and v are gone already
            _gather_group(model, attention_inputs(att), lm.attn_cols, rules, f"layer {i}: attn_cols")
    if lm.drop_ffn and ffn is not None:
        for rel, factory in fam.skip_ffn:
            setattr(block_module, rel, factory())
    elif ffn is not None:
        if lm.neurons is not None and not bool(lm.neurons.all()):
            keep = torch.nonzero(lm.neurons.bool().cpu()).flatten()
            for name in ffn.inputs:
                set_module(model, name, slice_linear(get_module(model, name), out_idx=keep))
            set_module(model, ffn.output, slice_linear(get_module(model, ffn.output), in_idx=keep))
        if lm.ffn_rows is not None and not bool(lm.ffn_rows.all()):
            set_module(model, ffn.output, scatter_rows(get_module(model, ffn.output), lm.ffn_rows.bool()))
        width_left = ffn.width if lm.neurons is None else int(lm.neurons.sum())
        if width_left or lm.ffn_cols is not None:  # given cols apply at width 0 too (a rebuild repeats them)
            ffn_rules = rules if width_left else rules._replace(detect=False)
            _gather_group(model, ffn.inputs, lm.ffn_cols, ffn_rules, f"layer {i}: ffn_cols")


def validate(masks: MaskSet, topo: Topology) -> None:
    """Mask shapes must match the model; a clear error otherwise."""
    for i, lm in masks.layers.items():
        if not 0 <= i < topo.num_layers:
            raise UsageError(f"mask for layer {i}, but the model has {topo.num_layers} layers")
        b = topo.blocks[i]
        for what, m, n in (
            ("heads", lm.heads, b.attention.num_heads if b.attention else None),
            ("neurons", lm.neurons, b.ffn.width if b.ffn else None),
            ("attn_rows", lm.attn_rows, topo.hidden_size),
            ("ffn_rows", lm.ffn_rows, topo.hidden_size),
            ("attn_cols", lm.attn_cols, topo.hidden_size),
            ("ffn_cols", lm.ffn_cols, topo.hidden_size),
        ):
            if m is not None and n is not None and m.numel() != n:
                raise UsageError(f"layer {i}: {what} mask has {m.numel()} entries, the layer has {n}")


@torch.no_grad()
def compact(model: nn.Module, masks: MaskSet, topo: Topology | None = None, *, zero_columns: bool = True) -> nn.Module:
    """Remove what the masks prune, in place; returns the model. Fine-grained masks stay as zeros.

    `zero_columns`: also remove the hidden dimensions a sublayer no longer reads, i.e. input columns that are zero
    in every linear of its input group (q, k and v together; all FFN inputs together), in every layer, masks or not:
    compaction removes whatever structure is already zero (NeuroPrune's group-sparse columns, L1's). Groups with
    an N:M or block pattern, or modules that are not plain linears, keep their inputs."""
    topo = topo or describe(model)
    validate(masks, topo)
    fam = family_of(model)
    zero_masked(model, masks, topo)
    rules = GatherRules(topo.hidden_size, masks.patterns, zero_columns)
    for i in range(topo.num_layers):
        _compact_layer(model, fam, topo, i, masks.layers.get(i, LayerMask()), rules)
    sync_config(model)
    return model


def rebuild(model: nn.Module, layers: list[dict]) -> nn.Module:
    """A freshly built model given the per-layer shapes a manifest recorded (`structure`)."""
    return compact(model, structure_masks(model, layers), zero_columns=False)


def sync_config(model: nn.Module) -> None:
    """Where every block has the same shape, write it into the config so plain from_pretrained works."""
    for key, value in uniform_config_update(model).items():
        setattr(model.config, key, value)


@torch.no_grad()
def check_equal(model: nn.Module, masks: MaskSet, inputs: dict, atol: float = 1e-4) -> float:
    """Max |masked - compacted| over the logits on `inputs`; raises if above atol."""
    masked = copy.deepcopy(model).eval()
    handles = apply_masks(masked, masks)
    ref = _logits(masked(**inputs))
    for h in handles:
        h.remove()
    compacted = compact(copy.deepcopy(model), masks).eval()
    got = _logits(compacted(**inputs))
    diff = float((ref - got).abs().max())
    if diff > atol:
        raise AssertionError(f"compacted model differs from the masked one by {diff:.3g} (> {atol})")
    return diff


def _logits(out) -> torch.Tensor:
    for key in ("logits", "last_hidden_state", "start_logits"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out[0]
