"""One-shot structured pruning from calibration data, then recovery on the compacted model.

Which units go matters more than the schedule, and training the small model costs less than training the masked
big one: the dense (fine-tuned) model's attention heads and FFN neurons are scored once on calibration batches
from the training split (`criterion`: first-order Taylor by default, or Fisher, activation, magnitude; see
prunekit.importance), the lowest-scoring fractions are removed per layer (or by one global ranking), the model is
compacted, and the recipe's training stage then fine-tunes the compacted model, with distillation from the
dense one when the recipe has a `distill` section. Torch-Pruning's Taylor recipe is this, without the teacher.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, field_validator
from torch import nn

from prunekit.importance import UnitScores, unit_masks, unit_scores
from prunekit.importance.magnitude import check_scope
from prunekit.masks import MaskSet
from prunekit.methods.base import Method, MethodConfig, register
from prunekit.topology import describe


class StructuredConfig(MethodConfig):
    criterion: Literal["taylor", "fisher", "activation", "magnitude"] = "taylor"  # how heads / neurons are scored
    heads: float = Field(0.5, ge=0, lt=1)  # fraction of each layer's query heads removed (scope layer)
    neurons: float = Field(0.5, ge=0, lt=1)  # fraction of each layer's FFN neurons removed (scope layer)
    scope: str = "layer"  # layer: the same fraction in every layer; global: one ranking over all layers
    calibration_examples: int = Field(512, ge=1)  # training examples the scores are measured on
    min_heads: int = Field(1, ge=0)  # never fewer per layer
    min_neurons: int = Field(1, ge=0)

    _scope = field_validator("scope")(check_scope)


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
