"""Recipe section of `structured`: one-shot structured pruning from calibration data, then recovery."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from prunekit.methods.base import MethodConfig


class StructuredConfig(MethodConfig):
    """Recipe section of `structured`: heads and FFN neurons scored once on calibration batches, the lowest-scoring
    removed and the model compacted before the training stage (METHODS.md 5)."""

    criterion: Literal["taylor", "taylor-elementwise", "fisher", "sensitivity", "activation", "magnitude"] = Field(
        "taylor",
        description="How heads / neurons are scored: taylor (|sum w * dL/dw| over the unit), taylor-elementwise "
        "(sum of |w * dL/dw| over the unit's weights, Torch-Pruning's group Taylor), fisher (squared "
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
    sublayers: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of all attention and FFN sublayers dropped whole, the lowest-scoring of one ranking "
        "over the model (depth pruning; at least one attention and one FFN sublayer stay).",
    )
    rows: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of the output rows (hidden dimensions written to the residual stream) of every "
        "remaining attention / FFN output projection removed, the lowest-scoring first (MLPruning's rows).",
    )
    scope: Literal["layer", "global", "latency"] = Field(
        "layer",
        description="layer: the fractions heads / neurons of every layer; global: those fractions from one ranking "
        "over all layers; latency: heads and neurons of any layer, the least important per millisecond saved (costs "
        "measured on this device), until the predicted speedup is `speedup` (heads / neurons are then unused).",
    )
    speedup: float = Field(
        2.0,
        ge=1,
        description="scope latency: the forward speedup over the dense model to reach, at latency_batch x "
        "latency_seq on the device the run uses.",
    )
    latency_batch: int = Field(32, ge=1, description="scope latency: the batch size the speedup is measured at.")
    latency_seq: int = Field(128, ge=1, description="scope latency: the sequence length the speedup is measured at.")
    costs: str | None = Field(
        None,
        description="scope latency: a JSON file of unit costs measured on the device the model will run on "
        "(`prunekit costs MODEL --out FILE` there), instead of measuring on the machine that prunes.",
    )
    calibration_examples: int = Field(512, ge=1, description="Training sequences the scores are measured on (a "
                                      "language-model split gives blocks of max_length tokens).")  # fmt: skip
    min_heads: int = Field(1, ge=0, description="Attention heads every layer keeps at least.")
    min_neurons: int = Field(1, ge=0, description="FFN neurons every layer keeps at least.")
    rounds: int = Field(
        1,
        ge=1,
        description="Iterative pruning: the fractions heads / neurons reached in this many equal cuts, the first "
        "before training and each next one once its share of the training steps is done, re-scored then on the "
        "calibration batches with the model as trained so far (1: all at once).",
    )
    repair: bool = Field(
        False,
        description="After removal, re-fit every attention / FFN output projection by least squares to the dense "
        "model's outputs on the calibration batches (layer by layer), so recovery starts close to the dense model.",
    )

    @model_validator(mode="after")
    def _combinations(self) -> StructuredConfig:
        if self.scope == "latency" and (self.sublayers > 0 or self.rows > 0):
            raise ValueError("scope latency spends its budget on heads and neurons: set sublayers and rows to 0")
        if self.rounds > 1 and (self.scope != "layer" or self.sublayers > 0 or self.rows > 0 or self.repair):
            raise ValueError("rounds > 1 cuts the same fraction of every layer's heads and neurons in turn: use scope "
                             "layer, with sublayers 0, rows 0 and repair false")  # fmt: skip
        if self.repair and (self.sublayers > 0 or self.rows > 0):
            raise ValueError("repair re-fits the output projections of whole sublayers: set sublayers and rows to 0")
        return self
