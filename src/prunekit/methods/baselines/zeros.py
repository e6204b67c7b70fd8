"""What exact zeros leave dead, and the exact magnitude cut: the end of training shared by L1 and NeuroPrune, so the
two differ only in their regularisers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.importance.magnitude import magnitude_masks
from prunekit.masks import MaskSet, element_masks, masks_from_zeros, merge
from prunekit.topology import Topology, get_module, weight_view


def dead_inputs(model: nn.Module, topo: Topology) -> MaskSet:
    """Neurons whose input rows (W1, or gate and up) and input biases are all zero: their pre-activation is 0
    and GELU / ReLU / SiLU of 0 is 0, so they contribute nothing. (A zero row with a non-zero bias gives a
    constant output and is kept: removing it would change the function.)"""
    masks = MaskSet()
    for b in topo.blocks:
        if b.ffn is None or not b.ffn.width:
            continue
        live = None
        for name in b.ffn.inputs:
            module = get_module(model, name)
            row = weight_view(module).abs().sum(1) > 0
            if getattr(module, "bias", None) is not None:
                row |= module.bias != 0
            live = row if live is None else live | row
        masks.layer(b.index).neurons = live
    return masks


@torch.no_grad()
def dead_gated(model: nn.Module, topo: Topology) -> MaskSet:
    """Gated FFNs (several input matrices, output act(gate x) * up x): a neuron with any input row and bias all
    zero is dead when the activation maps 0 to 0 (SiLU, GELU), which `dead_inputs` (all rows zero) misses."""
    masks = MaskSet()
    for b in topo.blocks:
        if b.ffn is None or not b.ffn.width or len(b.ffn.inputs) < 2:
            continue
        parent = get_module(model, b.ffn.inputs[0].rpartition(".")[0])
        act = getattr(parent, "act_fn", None)
        gate_ok = act is not None and float(act(torch.zeros(1)).abs()) == 0.0
        live = torch.ones(b.ffn.width, dtype=torch.bool)
        for k, name in enumerate(b.ffn.inputs):
            if k == 0 and not gate_ok:  # an unknown activation of 0 may be non-zero: only the product rule holds
                continue
            module = get_module(model, name)
            row = weight_view(module).abs().sum(1) > 0
            if getattr(module, "bias", None) is not None:
                row |= module.bias != 0
            live &= row.cpu()
        masks.layer(b.index).neurons = live
    return masks


def dead_structure(
    model: nn.Module, topo: Topology, extra: MaskSet | None = None, allow_empty_layers: bool = False
) -> MaskSet:
    """Heads and neurons whose removal cannot change the output: heads with zero output columns, neurons with zero
    in- or out-degree (gated FFNs: either input row empty), hidden rows nothing writes, plus `extra` (the head
    step's masks). A layer keeps at least one head and one neuron unless `allow_empty_layers`: what such a unit
    computes is zero anyway, so keeping it is exact too."""
    s = merge(masks_from_zeros(model, topo), dead_inputs(model, topo), dead_gated(model, topo))
    if extra is not None:
        s = merge(s, extra)
    if not allow_empty_layers:
        for b in topo.blocks:
            lm = s.layers.get(b.index)
            if lm is None:
                continue
            if lm.heads is not None and lm.heads.numel() and not bool(lm.heads.any()):
                lm.heads[_strongest_head(model, b.attention)] = True
            if lm.neurons is not None and lm.neurons.numel() and not bool(lm.neurons.any()):
                lm.neurons[_strongest_neuron(model, b.ffn)] = True
    return s


@torch.no_grad()
def exact_magnitude_cut(
    model: nn.Module, topo: Topology, keep: int, structure: Callable[[nn.Module], MaskSet]
) -> tuple[MaskSet, bool]:
    """Global magnitude cut of the blocks' linear weights to `keep` non-zero weights, then `structure(model)`
    (what became dead). Structure removal takes weights beyond the cut (a neuron whose W2 column was cut loses its
    W1 row too), so those are given back from the largest cut weights of live structure until exactly `keep`
    remain once the structure is removed. Returns (structure, exact); exact is False only when the structure alone
    (e.g. heads merged earlier) already removes more than asked. Weights are left cut (structure not yet zeroed)."""
    names = topo.prunable_linears()
    weights = [weight_view(get_module(model, n)) for n in names]
    original = [w.detach().to("cpu", copy=True) for w in weights]  # host copy: cut weights may be given back
    sparsity = 1.0 - keep / max(sum(w.numel() for w in weights), 1)
    cut = magnitude_masks(model, topo=topo, pattern="unstructured", sparsity=sparsity, scope="global")
    for name, w in zip(names, weights, strict=True):
        w.mul_(cut.weights[name].to(w.device, w.dtype))

    def live_masks(s: MaskSet) -> list[torch.Tensor]:
        em = element_masks(model, s, topo)
        full = lambda w: torch.ones(w.shape, dtype=torch.bool)  # noqa: E731
        return [em[n][0].cpu() if n in em else full(w) for n, w in zip(names, weights, strict=True)]

    s = structure(model)
    for _ in range(8):  # one round suffices unless giving weights back changes the structure (GQA evenness)
        live = live_masks(s)
        deficit = keep - sum(int(((w.detach().cpu() != 0) & m).sum()) for w, m in zip(weights, live, strict=True))
        if deficit <= 0:
            break
        zero = torch.zeros((), dtype=torch.float32)
        cand = torch.cat(
            [
                torch.where((w.detach().cpu() == 0) & m & (o != 0), o.abs().float(), zero).flatten()
                for w, m, o in zip(weights, live, original, strict=True)
            ]
        )
        n_cand = int((cand > 0).sum())
        if n_cand == 0:
            break
        back = torch.zeros_like(cand, dtype=torch.bool)
        back[torch.topk(cand, min(deficit, n_cand), sorted=False).indices] = True
        start = 0
        for w, o in zip(weights, original, strict=True):
            sel = back[start : start + w.numel()].view(w.shape)
            if bool(sel.any()):
                w[sel.to(w.device)] = o[sel].to(w.device, w.dtype)
            start += w.numel()
        s = structure(model)
    live = live_masks(s)
    return s, sum(int(((w.detach().cpu() != 0) & m).sum()) for w, m in zip(weights, live, strict=True)) == keep


def _strongest_head(model: nn.Module, att) -> int:
    o = weight_view(get_module(model, att.o)).detach()
    return int(o.reshape(o.shape[0], att.num_heads, att.head_dim).abs().sum((0, 2)).argmax())


def _strongest_neuron(model: nn.Module, ffn) -> int:
    return int(weight_view(get_module(model, ffn.output)).detach().abs().sum(0).argmax())
