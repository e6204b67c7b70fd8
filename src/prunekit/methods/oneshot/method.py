"""The `oneshot` method: weights pruned once from calibration batches (Wanda, SparseGPT or magnitude; the package
docstring says why), the zeros kept through any training that follows."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.importance.layerwise import calibrate_layer_by_layer, sublayer_stages
from prunekit.importance.sparsegpt import input_hessians, sparsegpt_prune
from prunekit.importance.wanda import input_squares, wanda_masks
from prunekit.masks import MaskSet
from prunekit.methods.base import Method, register
from prunekit.methods.oneshot.config import OneShotConfig
from prunekit.patterns import parse_pattern
from prunekit.topology import Topology, describe, get_module, weight_view


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return x.t() @ x


def _square_sum(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(0)


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
        self._calibration: dict[str, Any] = {}  # tokens, seconds, peak memory of the calibration

    def calibration_examples(self) -> int:
        return self.config.calibration_examples

    def calibration_length(self) -> int | None:
        return self.config.calibration_length

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        """Prune every block linear in place. Layer by layer by default (each block measured with the blocks before
        it already pruned, one block's activations in memory); `sequential: false` measures every linear in one
        forward of the dense model."""
        c = self.config
        names = describe(model).prunable_linears()
        keep: dict[str, torch.Tensor] = {}
        if c.score == "magnitude":  # Wanda's comparison groups with every input feature's norm 1: no data read
            self._prune({n: torch.ones(weight_view(get_module(model, n)).shape[1]) for n in names}, model, keep)
        elif c.sequential:
            statistic = _hessian if c.score == "sparsegpt" else _square_sum
            self._calibration = calibrate_layer_by_layer(
                model, batches, statistic, lambda spec, sums: self._prune(sums, model, keep),
                what=f"{self.name} ({c.score})", progress=self.progress,
                stages=sublayer_stages if c.sublayers else None,
            )  # fmt: skip
        else:
            t0 = time.perf_counter()
            measure = input_hessians if c.score == "sparsegpt" else input_squares
            sums, tokens = measure(model, names, batches)
            self._prune(sums, model, keep)
            self._calibration = {"tokens": tokens, "seconds": round(time.perf_counter() - t0, 2)}
        self._masks = MaskSet(weights=keep, patterns={n: c.pattern for n in keep})

    @torch.no_grad()
    def _prune(self, sums: dict[str, torch.Tensor], model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        """Prune the linears `sums` names from their calibration sums (X^T X for SparseGPT, sum of x_j^2 for Wanda,
        ones for magnitude), zeros written into the weights; their keep-masks added to `keep`."""
        c = self.config
        p = parse_pattern(c.pattern)
        nm = (p.n, p.m) if p.kind == "nm" else None
        for name in list(sums):
            view = weight_view(get_module(model, name))  # (out, in) view of the stored weight
            if c.score == "sparsegpt":
                pruned, keep[name] = sparsegpt_prune(view, sums.pop(name), sparsity=None if nm else c.sparsity,
                                                     nm=nm, block=c.block, damp=c.damp)  # fmt: skip
                view.copy_(pruned)
                continue
            norms = sums.pop(name).sqrt().float().to(view.device)
            scores = {name: view.detach().abs().float() * norms[None, :]}
            keep[name] = wanda_masks(scores, None if nm else c.sparsity, nm, c.pad_tail)[name]
            view.mul_(keep[name].to(view.dtype))

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
        cal = self._calibration
        return {"score": self.config.score, "pattern": self.config.pattern, "sequential": self.config.sequential,
                "sublayers": self.config.sublayers,
                "calibration_tokens": cal.get("tokens", 0), "calibration_s": cal.get("seconds"),
                "calibration_peak_mb": cal.get("peak_memory_mb")}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"calibration": dict(self._calibration)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._calibration = dict(state.get("calibration", self._calibration))
