"""The `structured` trainer method: one-shot structured pruning by importance on calibration data (the
package docstring says how), compacted before training."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from prunekit.importance import UnitScores, unit_masks, unit_scores
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

    def calibration_examples(self) -> int:
        return self.config.calibration_examples

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        c = self.config
        scores: UnitScores = unit_scores(model, c.criterion, None if c.criterion == "magnitude" else batches)
        self._batches = scores.batches
        self._masks = unit_masks(describe(model), scores, heads=c.heads, neurons=c.neurons, scope=c.scope,
                                 min_heads=c.min_heads, min_neurons=c.min_neurons)  # fmt: skip

    def prune_before_training(self) -> MaskSet | None:
        return self._masks

    def report(self) -> dict[str, Any] | None:
        return {"criterion": self.config.criterion, "calibration_batches": self._batches}
