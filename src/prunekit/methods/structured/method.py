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
from prunekit.importance.select import select_heads
from prunekit.masks import MaskSet
from prunekit.methods.base import Method, register
from prunekit.methods.structured.config import StructuredConfig
from prunekit.patterns import kept_count, topk_mask
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
        # rounds > 1: the steps the cuts so far were made at (their count is the round), the dense widths the
        # fractions are of, and the calibration batches the later cuts are scored on (kept until the last cut)
        self._cut_steps: list[int] = []
        self._widths: dict[int, tuple[int, int]] = {}
        self._data: list[dict] | None = None

    def calibration_examples(self) -> int:
        return self.config.calibration_examples

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        c = self.config
        data = None if c.criterion == "magnitude" else list(batches)  # read twice with sublayers / rows
        if c.rounds > 1:
            topo = describe(model)
            self._widths = {b.index: (b.attention.num_heads if b.attention is not None else 0,
                                      b.ffn.width if b.ffn is not None else 0) for b in topo.blocks}  # fmt: skip
            self._data, self._cut_steps = data, [0]
            self._masks = self._cut(model, 1)
            return
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

    def _cut(self, model: nn.Module, k: int) -> MaskSet:
        """Masks of the model as it is now that leave in every layer what cut k of `rounds` keeps of its dense
        heads and neurons, the lowest-scoring on the calibration batches removed."""
        c = self.config
        scores = unit_scores(model, c.criterion, self._data)
        self._batches = scores.batches
        share, masks = k / c.rounds, MaskSet()
        for b in describe(model).blocks:
            heads, width = self._widths[b.index]
            if b.index in scores.heads:
                keep = min(kept_count(heads, c.heads * share, min(c.min_heads, heads)), b.attention.num_heads)
                masks.layer(b.index).heads = select_heads(scores.heads[b.index], keep, b.attention.num_kv_heads)
            if b.index in scores.neurons:
                keep = min(kept_count(width, c.neurons * share, min(c.min_neurons, width)), b.ffn.width)
                masks.layer(b.index).neurons = topk_mask(scores.neurons[b.index], keep)
        return masks

    def prune_before_training(self) -> MaskSet | None:
        return self._masks

    def final_structure(self, step: int, total_steps: int) -> MaskSet | None:
        """rounds > 1: the next cut, once its share of the training steps is done (the trainer removes it)."""
        c = self.config
        done = len(self._cut_steps)
        if done == 0 or done >= c.rounds or step < total_steps * done // c.rounds:
            return None
        self._cut_steps.append(step)
        masks = self._cut(self.model, done + 1)
        if done + 1 == c.rounds:
            self._data = None  # the last cut is made: the batches are not needed again
        return masks

    def selectable(self, step: int, total_steps: int) -> bool:
        return len(self._cut_steps) in (0, self.config.rounds)

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
        out |= {"cuts_at_steps": self._cut_steps} if self.config.rounds > 1 else {}
        return out | ({"repair": self._repair} if self._repair is not None else {})

    def state_dict(self) -> dict[str, Any]:  # what the report needs after a resume, which does not calibrate again
        state = {"batches": self._batches, "repair": self._repair, "latency": self._latency, "dropped": self._dropped}
        if self.config.rounds > 1:
            state |= {"cut_steps": self._cut_steps, "widths": self._widths, "data": self._data}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._batches = state.get("batches", self._batches)
        self._repair, self._latency = state.get("repair"), state.get("latency")
        self._dropped = state.get("dropped")
        if "cut_steps" in state:
            self._cut_steps, self._widths, self._data = list(state["cut_steps"]), dict(state["widths"]), state["data"]
