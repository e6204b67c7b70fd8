"""Recipe section of `mlpruning` (METHODS.md section 3): multilevel structured pruning with learnable Top-k
thresholds, an adaptive density regulariser and distillation, in two steps (heads and rows, then blocks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from prunekit.methods.base import WarmStartConfig

UNIT_TYPES = ("heads", "attn_rows", "neurons", "ffn_rows")


class MLPruningConfig(WarmStartConfig):
    """`step`: 1 (heads and rows), 2 (blocks, e.g. of a step-1 run given as `model`) or both in one run."""

    step: Literal[1, 2, "both"] = Field(
        "both",
        description="1: heads and rows; 2: B x B blocks of every matrix (e.g. of a step-1 run given as `model`); "
        "both: step 1, compaction, then step 2 in one run.",
    )
    units: list[Literal["heads", "attn_rows", "neurons", "ffn_rows"]] = Field(
        list(UNIT_TYPES),
        description="Step 1's unit types: heads (KV groups with GQA), attn_rows (rows of Wo), neurons (FFN), "
        "ffn_rows (rows of W2).",
    )
    target: float = Field(
        0.5, gt=0, le=1, description="tau1: fraction of the blocks' weights (and biases) step 1 keeps."
    )
    block_target: float = Field(
        0.35, gt=0, le=1, description="tau2: fraction of the remaining matrices' weights step 2 keeps."
    )
    block: int = Field(32, ge=1, description="B of step 2's B x B blocks; step 1 rounds kept units up to it.")
    round_to_block: bool = Field(
        True,
        description="Step 1 ends with kept units rounded up to a multiple of `block` (then compacted), so step 2 "
        "can pack every matrix.",
    )
    score_lr: float = Field(
        1e-2,
        gt=0,
        description="Learning rate of the scores' own optimizer group (no weight decay; Top-k reads only their order).",
    )
    # the regulariser's gradient vanishes at the target, and momentum carries a threshold past it. Adam moves a
    # threshold about its lr per step, so `auto` gets it from its start to the target in the first `reach` of the
    # stage (~0.4 with the default warm-up and linear decay), whatever the stage's length
    threshold_lr: float | Literal["auto"] = Field(
        "auto",
        description="Learning rate of the thresholds' own group (no decay, no momentum); auto = (threshold_init - "
        "logit(target)) / (reach x the stage's steps), so a threshold reaches the target whatever the stage's "
        "length.",
    )
    reach: float = Field(
        0.3,
        gt=0,
        le=1,
        description="threshold_lr auto: fraction of the stage's steps in which a threshold can reach the target.",
    )
    threshold_betas: tuple[float, float] = Field(
        (0.0, 0.9), description="Adam betas of the thresholds' group (no momentum by default)."
    )
    score_init: float = Field(0.0, description="Initial value of every unit's (or block's) score.")
    threshold_init: float = Field(
        10.0, description="Initial threshold t: sigmoid(10) ~ 1 keeps everything at the start."
    )
    lambda_final: float = Field(
        2e4,
        ge=0,
        description="Adaptive regulariser: lambda = max(lambda_final x R / (1 - tau)^2, lambda_min), with "
        "R = (density - tau)^2 above the target.",
    )
    lambda_min: float = Field(50.0, ge=0, description="Adaptive regulariser: the smallest lambda above the target.")
    lambda_small: float = Field(10.0, ge=0, description="lambda once R < small_penalty (near the target).")
    small_penalty: float = Field(3e-4, ge=0, description="R below which lambda is lambda_small.")
    pack: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Block-sparse kernels after step 2: auto (only matrices timed faster than dense), always, or "
        "never.",
    )
    pack_tokens: int = Field(4096, ge=1, description="Tokens per batch the packing decision is timed at (32 x 128).")
    min_speedup: float = Field(
        1.05, gt=0, description="pack auto: a matrix is packed only when at least this many times faster than dense."
    )
    end: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Best validation checkpoints are kept only from this fraction of a stage's steps on, once the "
        "regulariser has brought the density to its target.",
    )

    @field_validator("threshold_lr")
    @classmethod
    def _threshold_lr(cls, v: float | str) -> float | str:
        if v != "auto" and not float(v) > 0:
            raise ValueError("threshold_lr must be positive, or auto")
        return v

    @field_validator("threshold_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("threshold_betas must lie in [0, 1), e.g. [0.0, 0.9]")
        return v

    @field_validator("units")
    @classmethod
    def _units(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one unit type: heads, attn_rows, neurons, ffn_rows")
        if len(set(v)) != len(v):
            raise ValueError("a unit type is listed twice")
        return list(v)
