"""The `oneshot` method: weights pruned once from calibration batches (Wanda, SparseGPT or magnitude; the package
docstring says why), the zeros kept through any training that follows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.importance.sparsegpt import input_hessians, sparsegpt_prune
from prunekit.importance.wanda import input_norms, wanda_masks, wanda_scores
from prunekit.masks import MaskSet
from prunekit.methods.base import Method, register
from prunekit.methods.oneshot.config import OneShotConfig
from prunekit.patterns import parse_pattern
from prunekit.topology import Topology, describe, get_module, weight_view


@register
class OneShot(Method):
    """Weights pruned once on calibration data, before training: Wanda (Sun et al., ICLR 2024; |W| * ||X|| per
    output row or N:M group), SparseGPT (Frantar & Alistarh, ICML 2023; OBS saliency with the kept weights
    updated) or magnitude; training, when the recipe has any, keeps the zeros."""

    name = "oneshot"
    config_class = OneShotConfig
    config: OneShotConfig

    def __init__(self, config: OneShotConfig | dict | None = None) -> None:
        super().__init__(config)
        self._masks: MaskSet | None = None
        self._tokens = 0

    def calibration_examples(self) -> int:
        return self.config.calibration_examples

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        c = self.config
        names = describe(model).prunable_linears()
        p = parse_pattern(c.pattern)
        nm = (p.n, p.m) if p.kind == "nm" else None
        if c.score == "sparsegpt":
            hessians, self._tokens = input_hessians(model, names, batches)
            keep = {}
            for name in names:
                view = weight_view(get_module(model, name))  # (out, in) view of the stored weight
                pruned, keep[name] = sparsegpt_prune(view, hessians.pop(name), sparsity=None if nm else c.sparsity,
                                                     nm=nm, block=c.block, damp=c.damp)  # fmt: skip
                with torch.no_grad():
                    view.copy_(pruned)
        else:
            if c.score == "magnitude":  # the same comparison groups with every input feature's norm 1: no data read
                norms = {n: torch.ones(weight_view(get_module(model, n)).shape[1]) for n in names}
            else:
                norms, self._tokens = input_norms(model, names, batches)
            keep = wanda_masks(wanda_scores(model, norms), None if nm else c.sparsity, nm, c.pad_tail)
        self._masks = MaskSet(weights=keep, patterns={n: c.pattern for n in keep})

    def prune_before_training(self) -> MaskSet | None:
        return self._masks

    def attach(self, model: nn.Module, topo: Topology) -> None:
        """The zeros the pruning left (also after a resume, which does not calibrate again) stay zero."""
        super().attach(model, topo)
        names = topo.prunable_linears()
        with torch.no_grad():
            weights = {n: weight_view(get_module(model, n)) != 0 for n in names}
        self._masks = MaskSet(weights=weights, patterns={n: self.config.pattern for n in names})

    def masks(self) -> MaskSet | None:
        return self._masks

    def report(self) -> dict[str, Any] | None:
        return {"score": self.config.score, "pattern": self.config.pattern, "calibration_tokens": self._tokens}

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self._tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._tokens = state.get("tokens", self._tokens)
