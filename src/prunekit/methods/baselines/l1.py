"""Plain L1 regularisation: the baseline NeuroPrune is compared against (METHODS.md 1f).

The penalty is sum |W| over the weights (not biases) of every prunable linear of the blocks, uniformly weighted
and with no head step, so it differs from NeuroPrune only where NeuroPrune adds something. Proximal form (the
default, methods/shrinkage.py): a soft threshold of `shrink` x mean|W| over the run after each optimizer step,
the same pull NeuroPrune applies on average. Loss form: term `l1` = alpha * sum |W| (NeuroPrune's R_mlp scale).
Target mode steers the pull to the cubic schedule and caps it at the target quantile, as NeuroPrune's does.
At the end either an exact global magnitude cut to `target_sparsity`, or (the paper's protocol) |w| <= eps set
to zero and the structure that became dead removed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.importance.magnitude import magnitude_masks
from prunekit.masks import MaskSet, masks_from_zeros, merge, zero_masked
from prunekit.methods.base import Method, register
from prunekit.methods.baselines.config import L1Config
from prunekit.methods.baselines.shrinkage import Pull, ShrinkState
from prunekit.methods.baselines.zeros import dead_inputs, dead_structure, exact_magnitude_cut
from prunekit.patterns import kept_count
from prunekit.topology import Topology, get_module, weight_view


@register
class L1(Method):
    """Plain L1 regularisation of the block weights (the NeuroPrune baseline); cut at eps or to a target at the end."""

    name = "l1"
    config_class = L1Config
    is_baseline = True

    def selectable(self, step: int, total_steps: int) -> bool:
        return step >= self.config.end * total_steps  # masks final from `end` on

    config: L1Config

    def __init__(self, config: L1Config | dict | None = None) -> None:
        super().__init__(config)
        self._names: list[str] = []
        self.shrink = ShrinkState(self.config)

    def attach(self, model: nn.Module, topo: Topology) -> None:
        super().attach(model, topo)
        self._names = topo.prunable_linears()
        self.shrink.attach(self._pulls())

    def _pulls(self) -> list[Pull]:
        return [(n, weight_view(get_module(self.model, n)), 1.0) for n in self._names]

    def _weights(self) -> list[torch.Tensor]:
        # looked up on every call (cheap), so a wrapper that replaces parameters (FSDP) is still seen
        return [get_module(self.model, name).weight for name in self._names]

    def loss_terms(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        if not self._names or self.config.alpha == 0 or self.config.penalty != "loss":
            return {}
        # accumulate in float32: a bf16 sum of ~1e8 terms would round the logged value badly
        total = sum(torch.linalg.vector_norm(w, ord=1, dtype=torch.float32) for w in self._weights())
        return {"l1": self.config.alpha * self.shrink.scale * total}

    @torch.no_grad()
    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        c = self.config
        if not self._names:
            return {}
        logged, mode = {}, "pull"
        if c.target_sparsity is not None:
            mode, logged = self.shrink.control(step, total_steps, self._near_zero())
        if c.penalty == "proximal" and mode != "none":
            logged["shrink"] = self.shrink.step(self._pulls(), total_steps, mode, logged.get("near_zero_goal"))
            zero_masked(self.model, dead_structure(self.model, self.topo), self.topo)  # as NeuroPrune: see there
        self.shrink.near = self._near_zero()
        return {"near_zero": self.shrink.near, **logged}

    def _near_zero(self) -> float:
        weights = self._weights()
        small = sum(int((w.abs() <= self.config.eps).sum()) for w in weights)
        return small / max(sum(w.numel() for w in weights), 1)

    def state_dict(self) -> dict[str, Any]:
        return self.shrink.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shrink.load_state_dict(state)

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> MaskSet | None:
        # the same end as NeuroPrune's (eps threshold or exact cut, then dead structure incl. gated FFNs), so the
        # two differ only in their regularisers

        c, topo = self.config, self.topo
        names = topo.prunable_linears()
        weights = [weight_view(get_module(model, n)) for n in names]
        if c.target_sparsity is not None and c.pattern == "neuron":
            masks = magnitude_masks(model, topo=topo, pattern="neuron", sparsity=c.target_sparsity, scope="global")
            zero_masked(model, masks, topo)
            return merge(masks, masks_from_zeros(model, topo), dead_inputs(model, topo))
        if c.target_sparsity is not None:
            keep = kept_count(sum(w.numel() for w in weights), c.target_sparsity)
            structure, _ = exact_magnitude_cut(model, topo, keep, lambda m: dead_structure(m, topo))
        else:
            for w in weights:
                w.masked_fill_(w.abs() <= c.eps, 0.0)
            structure = dead_structure(model, topo)
        zero_masked(model, structure, topo)
        masks = merge(structure)
        for name, w in zip(names, weights, strict=True):
            masks.weights[name] = w != 0
            masks.patterns[name] = "unstructured"
        return masks
