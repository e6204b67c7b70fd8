"""A sub-network applied during the forward, without touching the weights (many candidates share one model).

Heads: the input of the attention output projection (the concatenated per-head contexts) is multiplied by a
per-head gate, so a gated-off head contributes exactly nothing, as when compaction removes it. Neurons: the
input of the FFN output projection, likewise. Layers: the dropped sublayers' forwards are swapped for the skip
modules compaction installs (`prunekit.masks.skip_hooks`), so the block adds nothing to the residual stream.
The masked super-network therefore computes what the compacted sub-network computes (tested).

Gates are fresh tensors per sub-network, never edited in place, so a forward's autograd graph stays valid
while the next sub-network is set; with `requires_grad` they give head / neuron importance (d loss / d gate).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.masks import ForwardSwap, LayerMask, MaskSet, skip_hooks
from prunekit.topology import Topology, get_module


class GateHooks:
    """Forward pre-hooks on every block's attention output and FFN output projections."""

    def __init__(self, model: nn.Module, topo: Topology) -> None:
        self.model, self.topo = model, topo
        self.heads: dict[int, torch.Tensor] = {}  # layer -> (num query heads,) gate
        self.neurons: dict[int, torch.Tensor] = {}  # layer -> (width,) gate
        self.swaps: list[ForwardSwap] = []
        self.current: MaskSet | None = None
        self._handles: list = []
        self.attach()

    def attach(self) -> None:
        if self._handles:
            return
        model, topo = self.model, self.topo
        for b in topo.blocks:
            if b.attention is not None and b.attention.num_heads:
                hook = self._head_hook(b.index, b.attention.head_dim)
                self._handles.append(get_module(model, b.attention.o).register_forward_pre_hook(hook))
            if b.ffn is not None:
                hook = self._neuron_hook(b.index)
                self._handles.append(get_module(model, b.ffn.output).register_forward_pre_hook(hook))

    def _head_hook(self, layer: int, head_dim: int):
        def hook(module, args):
            gate = self.heads.get(layer)
            if gate is None:
                return None
            x = args[0]
            return (x * gate.to(device=x.device, dtype=x.dtype).repeat_interleave(head_dim), *args[1:])

        return hook

    def _neuron_hook(self, layer: int):
        def hook(module, args):
            gate = self.neurons.get(layer)
            if gate is None:
                return None
            x = args[0]
            return (x * gate.to(device=x.device, dtype=x.dtype), *args[1:])

        return hook

    def set(self, masks: MaskSet | None) -> None:
        """Apply a sub-network (None: the full network) to the following forwards."""
        if masks is self.current and masks is not None:
            return
        for s in self.swaps:
            s.remove()
        self.swaps, self.heads, self.neurons = [], {}, {}
        self.current = masks
        if masks is None:
            return
        drops = MaskSet()
        for i, lm in masks.layers.items():
            if lm.drop_attention or lm.drop_ffn:
                drops.layers[i] = LayerMask(drop_attention=lm.drop_attention, drop_ffn=lm.drop_ffn)
            if lm.heads is not None and not bool(lm.heads.all()):
                self.heads[i] = lm.heads.float()
            if lm.neurons is not None and not bool(lm.neurons.all()):
                self.neurons[i] = lm.neurons.float()
        if drops.layers:
            self.swaps = skip_hooks(self.model, drops, self.topo)

    def set_gates(self, heads: dict[int, torch.Tensor], neurons: dict[int, torch.Tensor]) -> None:
        """Explicit (e.g. differentiable) gates, for importance scores."""
        self.set(None)
        self.heads, self.neurons = dict(heads), dict(neurons)

    def remove(self) -> None:
        """Back to the plain model (also before a deepcopy: copied hooks would still read these gates)."""
        self.set(None)
        for h in self._handles:
            h.remove()
        self._handles = []
