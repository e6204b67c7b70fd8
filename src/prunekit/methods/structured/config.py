"""Recipe section of `structured`: one-shot structured pruning from calibration data, then recovery."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from prunekit.importance.magnitude import check_scope
from prunekit.methods.base import MethodConfig


class StructuredConfig(MethodConfig):
    """Recipe section of `structured`: heads and FFN neurons scored once on calibration batches, the lowest-scoring
    removed and the model compacted before the training stage (METHODS.md 5)."""

    criterion: Literal["taylor", "fisher", "sensitivity", "activation", "magnitude"] = Field(
        "taylor",
        description="How heads / neurons are scored: taylor (|sum w * dL/dw| over the unit), fisher (squared "
        "gradient of a unit mask), sensitivity (sum of |dL/d mask| over batches), activation (mean |activation|), "
        "magnitude (weight norm, no data).",
    )
    heads: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Fraction of the query heads removed (of each layer's with scope layer, of all with global).",
    )
    neurons: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Fraction of the FFN neurons removed (of each layer's with scope layer, of all with global).",
    )
    scope: str = Field(
        "layer", description="layer: the same fraction in every layer; global: one ranking over all layers."
    )
    calibration_examples: int = Field(512, ge=1, description="Training examples the scores are measured on.")
    min_heads: int = Field(1, ge=0, description="Attention heads every layer keeps at least.")
    min_neurons: int = Field(1, ge=0, description="FFN neurons every layer keeps at least.")
    repair: bool = Field(
        False,
        description="After removal, re-fit every attention / FFN output projection by least squares to the dense "
        "model's outputs on the calibration batches (layer by layer), so recovery starts close to the dense model.",
    )

    _scope = field_validator("scope")(check_scope)
