"""Recipe section of `neuroprune` (METHODS.md section 1); the shared shrinkage / target fields come from
`ShrinkConfig` (methods/baselines/config.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from prunekit.methods.baselines.config import ShrinkConfig


class NeuroPruneConfig(ShrinkConfig):
    """Recipe section of `neuroprune`: preferential-attachment L1 on FFN neurons, l_1/2 group sparsity on attention
    inputs, redundant-head merging after each epoch; an eps threshold (or an exact cut to `target_sparsity`) and
    dead-structure removal at the end."""

    # proximal form: only their ratio matters (FFN pull x alpha / mean(alpha, beta), attention pull x beta / mean),
    # `shrink` sets the strength
    alpha: float = Field(
        default=1e-4,
        ge=0,
        description="Weight of the FFN penalty R_mlp (preferential-attachment L1) summed over layers, as in the "
        "paper (same scale as the l1 baseline's alpha). Proximal form: only the ratio alpha / beta matters; "
        "`shrink` sets the strength.",
    )
    beta: float = Field(
        default=1e-4,
        ge=0,
        description="Weight of the attention penalty R_att (group l_1/2 over the input columns of [Wq; Wk; Wv]). "
        "Proximal form: only the ratio alpha / beta matters.",
    )
    eps: float = Field(
        default=1e-4,
        ge=0,
        description="|w| <= eps is no edge when counting a neuron's degree, and is set to zero at the end.",
    )
    # 1 - frac is ~0 everywhere from a dense start (measured: 0.8% near zero vs L1's 3.5% in 250 steps) and,
    # normalised, hands the whole pull to the few neurons that happen to hold a weight below eps
    weighting: Literal["linear", "inverse"] = Field(
        "inverse",
        description="Degree weight of a neuron's edges: inverse = 1 / (frac + 1e-3) normalised to mean 1 (pulls like "
        "plain L1 from a dense start and sharpens as neurons thin); linear = 1 - frac (the paper's text).",
    )
    degree_refresh_steps: int = Field(
        default=1, ge=1, description="Optimizer steps between refreshes of the neurons' degree weights."
    )
    head_pruning: bool = Field(
        True, description="Run the redundant-head step after each epoch (merge heads whose Q/K/V rows are close)."
    )
    theta: float = Field(
        default=0.15,
        ge=0,
        description="Two heads are redundant when max |P_i - P_j| <= theta over their Q/K/V rows (paper grid "
        "0.15, 0.2, 0.25).",
    )
    theta_mode: Literal["absolute", "relative"] = Field(
        "absolute",
        description="absolute: theta is a weight distance; relative: theta x the layer's mean |Q/K/V weight|, so "
        "one value transfers across models.",
    )
    merge: bool = Field(
        True, description="Fold a removed head's output-projection columns into its survivor's (function kept)."
    )
    structure: float | None = Field(
        None,
        description="Fraction of the blocks' linear weights to remove as whole units that compaction takes out: FFN "
        "neurons and hidden dimensions the attention no longer reads (columns of [Wq; Wk; Wv]). The group terms "
        "become proximal group steps steered along the cubic schedule to it, and the end empties the weakest groups "
        "to it exactly before the element cut takes the rest of `target_sparsity` (which it needs, and must not "
        "exceed). Unset: the paper's element-wise terms only.",
    )
    structure_score: Literal["activation", "magnitude"] = Field(
        "activation",
        description="Structure mode: which groups the pull empties first. activation: weight norm times the RMS of "
        "the group's input over the training batches (what the data sends through it); magnitude: weight norm only.",
    )
    allow_empty_layers: bool = Field(
        False,
        description="Allow a layer to lose all its heads or neurons; otherwise each keeps at least one head and "
        "one neuron at the end.",
    )

    @model_validator(mode="after")
    def _structure(self) -> NeuroPruneConfig:
        if self.structure is None:
            return self
        if not 0.0 < self.structure < 1.0:
            raise ValueError(f"structure must be a fraction in (0, 1), got {self.structure}")
        if self.target_sparsity is None or self.structure > self.target_sparsity:
            raise ValueError(
                f"structure ({self.structure}) is part of target_sparsity: set target_sparsity >= structure"
            )
        if self.penalty != "proximal":
            raise ValueError("structure works through proximal group steps: use penalty: proximal")
        return self
