"""The `structured` trainer method: one-shot structured pruning by importance on calibration data (the
package docstring says how), compacted before training."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from prunekit.compact.repair import refit_outputs
from prunekit.costs import measure_unit_costs, read_unit_costs
from prunekit.importance import UnitScores, sublayer_masks, sublayer_scores, unit_masks, unit_scores
from prunekit.importance.allocate import allocate
from prunekit.masks import MaskSet
from prunekit.methods.base import Method, register
from prunekit.methods.structured.config import StructuredConfig
from prunekit.topology import describe


@register
class Structured(Method):
    """One-shot structured pruning of heads and neurons by importance measured on calibration data (Taylor by
    default), compacted before training, so the recovery trains the small model."""

    name = "structured"
    config_class = StructuredConfig
    config: StructuredConfig
    needs_finetuned = True  # the scores are those of the fine-tuned task model

    def __init__(self, config: StructuredConfig | dict | None = None) -> None:
        super().__init__(config)
        self._masks: MaskSet | None = None
        self._batches = 0
        self._dense: nn.Module | None = None  # the model before removal, kept for the repair only
        self._repair: dict[str, float] | None = None
        self._latency: dict[str, Any] | None = None
        self._dropped: list[str] | None = None  # "layer.kind" of the sublayers dropped whole

    def calibration_examples(self) -> int:
        return self.config.calibration_examples

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        c = self.config
        data = None if c.criterion == "magnitude" else list(batches)  # read twice with sublayers / rows
        scores: UnitScores = unit_scores(model, c.criterion, data)
        self._batches = scores.batches
        if c.repair:
            self._dense = copy.deepcopy(model).eval()
        if c.scope == "latency":
            costs = (
                read_unit_costs(c.costs)
                if c.costs is not None
                else measure_unit_costs(model, batch=c.latency_batch, seq_len=c.latency_seq)
            )
            self._masks, predicted = allocate(describe(model), scores, costs, c.speedup, min_heads=c.min_heads,
                                              min_neurons=c.min_neurons)  # fmt: skip
            self._latency = {"costs": costs.to_dict(), "predicted_ms": predicted,
                             "predicted_speedup": costs.dense_ms / predicted}  # fmt: skip
            return
        topo = describe(model)
        self._masks = unit_masks(topo, scores, heads=c.heads, neurons=c.neurons, scope=c.scope,
                                 min_heads=c.min_heads, min_neurons=c.min_neurons)  # fmt: skip
        if c.sublayers > 0 or c.rows > 0:
            coarse = sublayer_scores(model, c.criterion, data, topo)
            sublayer_masks(self._masks, coarse, sublayers=c.sublayers, rows=c.rows)
            self._dropped = sorted(f"{i}.{kind}" for i, kind in coarse.sublayers
                                   if getattr(self._masks.layer(i), f"drop_{kind}"))  # fmt: skip

    def prune_before_training(self) -> MaskSet | None:
        return self._masks

    def after_compact(self, model: nn.Module, batches: Callable[[], Iterable[dict]]) -> None:
        if self._dense is None:
            return
        fits = refit_outputs(model, self._dense, batches)
        self._dense = None
        self._repair = {k: sum(f[k] for f in fits.values()) / len(fits) for k in ("mse_before", "mse_after")}

    def report(self) -> dict[str, Any] | None:
        out = {"criterion": self.config.criterion, "calibration_batches": self._batches}
        out |= {"latency": self._latency} if self._latency is not None else {}
        out |= {"dropped_sublayers": self._dropped} if self._dropped is not None else {}
        return out | ({"repair": self._repair} if self._repair is not None else {})

    def state_dict(self) -> dict[str, Any]:  # what the report needs after a resume, which does not calibrate again
        return {"batches": self._batches, "repair": self._repair, "latency": self._latency, "dropped": self._dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._batches = state.get("batches", self._batches)
        self._repair, self._latency = state.get("repair"), state.get("latency")
        self._dropped = state.get("dropped")
