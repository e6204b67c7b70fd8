"""Recipe sections of the baselines: gradual magnitude (`magnitude`), movement (`movement`) and plain L1 (`l1`),
with the configs they share: the cubic schedule (`ScheduleConfig`, magnitude and movement) and the proximal
shrinkage / target-sparsity controller (`ShrinkConfig`, l1 and neuroprune; see shrinkage.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from prunekit.core.errors import UsageError
from prunekit.importance.magnitude import check_scope
from prunekit.methods.base import MethodConfig, WarmStartConfig
from prunekit.patterns import check_sparsity, parse_pattern


def normalize_patterns(value: str | Sequence[str], allowed: Sequence[str]) -> list[str]:
    """One pattern or a list of them, in canonical spelling; at most one fine-grained pattern, because two
    of them on the same weights would each claim the whole sparsity budget."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise UsageError("pattern: give at least one pattern, e.g. unstructured, 2:4, 8x8, head or neuron")
    out: list[str] = []
    for item in items:
        pattern = parse_pattern(item)
        if pattern.kind not in allowed:
            raise UsageError(f"pattern '{item}' is not supported by this method: use one of {', '.join(allowed)}")
        if str(pattern) in out:
            raise UsageError(f"pattern '{item}' is listed twice")
        out.append(str(pattern))
    if sum(parse_pattern(p).fine_grained for p in out) > 1:
        raise UsageError(f"patterns {out}: combine at most one of unstructured, N:M and BxB (with head/neuron/row)")
    return out


# ---------------------------------------------------------------- the cubic schedule (magnitude, movement)


class ScheduleConfig(MethodConfig):
    """The cubic schedule's fields, shared by gradual magnitude and movement pruning (Zhu & Gupta 2017:
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3 between `start` and `end`)."""

    sparsity: float = Field(
        0.5, description="Final fraction removed (of the weights, or of the heads / neurons for those patterns)."
    )
    initial_sparsity: float = Field(0.0, description="Sparsity s_i the cubic schedule starts from, reached at `start`.")
    start: float = Field(
        0.1, description="Fraction of the run's optimizer steps trained dense before pruning starts (in [0, 1])."
    )
    end: float = Field(
        0.7,
        description="Fraction of the optimizer steps at which the final sparsity is reached; the masks are then "
        "frozen and training goes on masked (in [0, 1]; best checkpoints are selected only from here on).",
    )
    train_small: bool = Field(
        True,
        description="Structured patterns only (head / neuron / row): remove the pruned units from the model as soon "
        "as their masks are final (at `end`), so the rest of training runs on the smaller model.",
    )
    update_every: int | None = Field(
        default=None,
        ge=1,
        description="Optimizer steps between mask updates; unset: the method's default (magnitude: about 50 "
        "updates over the run; movement: every step).",
    )

    @field_validator("sparsity", "initial_sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        return check_sparsity(v)

    @field_validator("start", "end")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be a fraction of the training steps, in [0, 1]")
        return float(v)

    @model_validator(mode="after")
    def _order(self) -> ScheduleConfig:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not come before start ({self.start})")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity ({self.initial_sparsity}) exceeds sparsity ({self.sparsity})")
        return self


class GradualMagnitudeConfig(ScheduleConfig):
    """Recipe section of `magnitude` (gradual magnitude pruning, Zhu & Gupta 2017). `pattern`: unstructured | N:M
    (e.g. 2:4; fixed at `start`, `sparsity` does not apply) | BxB (e.g. 32x32) | head | neuron | row, or a list of
    them (e.g. [head, neuron]), each pruned to the same sparsity."""

    pattern: str | list[str] = Field(
        default="unstructured",
        validate_default=True,
        description="What is pruned: unstructured | N:M (e.g. 2:4, keep N of every M inputs; fixed at `start`, "
        "`sparsity` does not apply) | BxB (e.g. 32x32 blocks) | head | neuron | row, or a list such as "
        "[head, neuron], each pruned to `sparsity` (at most one of unstructured, N:M, BxB).",
    )
    scope: str = Field(
        "global",
        description="global: one ranking over all layers; layer: per matrix (fine-grained patterns) or per layer "
        "(heads, neurons, rows).",
    )
    pad_tail: bool = Field(
        False, description="N:M: keep a trailing partial group of inputs dense instead of refusing the shape."
    )
    min_heads: int = Field(
        default=1, ge=0, description="Attention heads every layer keeps (0 allows emptying a layer's attention)."
    )
    min_neurons: int = Field(
        default=1, ge=0, description="FFN neurons every layer keeps (0 allows emptying a layer's FFN)."
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | list[str]) -> list[str]:
        return normalize_patterns(v, ("unstructured", "nm", "block", "head", "neuron", "row"))

    _scope = field_validator("scope")(check_scope)


class MovementConfig(ScheduleConfig, WarmStartConfig):
    """Recipe section of `movement` (Sanh, Wolf & Rush 2020, hard Top-K). `pattern`: unstructured | N:M (e.g. 2:4,
    from `start` on; `sparsity` does not apply) | BxB (scores per tile) | head | neuron, or a list such as
    [head, neuron], each pruned to the same sparsity."""

    pattern: str | list[str] = Field(
        default="unstructured",
        validate_default=True,
        description="What is pruned: unstructured | N:M (e.g. 2:4, from `start` on; `sparsity` does not apply) | "
        "BxB (one score per tile) | head | neuron, or a list such as [head, neuron], each pruned to `sparsity`.",
    )
    scope: str = Field(
        "layer",
        description="layer: Top-K per matrix (per layer for heads / neurons), as Sanh et al.; global: one ranking "
        "over all layers.",
    )
    score_lr: float = Field(
        default=1e-2, gt=0, description="Learning rate of the importance scores' own optimizer group (no weight decay)."
    )
    score_init: float = Field(0.0, description="Initial value of every importance score.")
    min_heads: int = Field(
        default=1, ge=0, description="Attention heads every layer keeps (0 allows emptying a layer's attention)."
    )
    min_neurons: int = Field(
        default=1, ge=0, description="FFN neurons every layer keeps (0 allows emptying a layer's FFN)."
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | list[str]) -> list[str]:
        return normalize_patterns(v, ("unstructured", "nm", "block", "head", "neuron"))

    _scope = field_validator("scope")(check_scope)

    @model_validator(mode="after")
    def _warm_start_units(self) -> MovementConfig:
        if self.score_from != "none" and any(parse_pattern(p).kind not in ("head", "neuron") for p in self.pattern):
            raise ValueError("score_from starts the scores of heads and neurons: use pattern head / neuron with it")
        return self


# ---------------------------------------------------------------- proximal shrinkage (l1, neuroprune)


class ShrinkConfig(MethodConfig):
    """Fields every regularised-fine-tuning method shares (l1, neuroprune): the penalty's form, the proximal pull
    and the target-sparsity controller (methods/baselines/shrinkage.py)."""

    penalty: Literal["proximal", "loss"] = Field(
        "proximal",
        description="proximal: the penalty applied as a soft threshold after each optimizer step (zeros weights "
        "within a fine-tuning budget); loss: the paper's loss terms through the optimizer.",
    )
    # Uncapped, the pull also shrinks every surviving weight (~0.7 std of it took MiniLM-L6 to chance), so the default
    # stays small; target mode sets the strength itself (the value cancels out of lambda_t)
    shrink: float = Field(
        default=0.1,
        gt=0,
        description="Proximal form without a target: the total pull over the run, in units of each matrix's mean "
        "|w|. Kept small: uncapped, it also shrinks every surviving weight. With `target_sparsity` the controller "
        "sets the strength itself.",
    )
    target_sparsity: float | None = Field(
        None,
        description="Fraction of the blocks' linear weights to remove: set, the pull is steered along a cubic "
        "schedule to it and the end is an exact magnitude cut; unset, |w| <= eps is cut at the end.",
    )
    start: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Target mode: fraction of the optimizer steps at which the schedule leaves 0.",
    )
    end: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="Target mode: fraction of the optimizer steps at which the schedule reaches the target; best "
        "checkpoints are selected only from here on.",
    )
    # Zhang 2010: capped L1's proximal map leaves large weights alone. Plain L1 also shrinks every surviving weight by
    # the whole pull, ~0.7 std at 50% sparsity, far more than a few hundred AdamW steps can restore (measured: the
    # task loss went from 0.30 to 0.64 on MiniLM-L6 / RT by 59% sparsity)
    capped: bool = Field(
        True,
        description="Target mode, proximal: pull only the entries below the target quantile of |w| / (mean |w|) "
        "(capped L1), so weights that survive the target are not shrunk.",
    )
    control_rate: float = Field(
        default=0.02,
        gt=0,
        le=1,
        description="Target mode: multiplicative change of the pull's scale per step, toward the schedule.",
    )
    max_scale: float = Field(
        default=1e4, ge=1, description="Loss form, target mode: the scale stays in [1 / max_scale, max_scale]."
    )

    @field_validator("target_sparsity")
    @classmethod
    def _target(cls, v: float | None) -> float | None:
        return None if v is None else check_sparsity(v, "target_sparsity")

    @model_validator(mode="after")
    def _order(self) -> ShrinkConfig:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not come before start ({self.start})")
        return self


class L1Config(ShrinkConfig):
    """Recipe section of `l1`: plain L1 regularisation of the block weights, the NeuroPrune baseline."""

    # sum |W| is large (about 2.5e6 for BERT-base's blocks), so 1e-4 gives every weight a gradient of
    # 1e-4 * sign(w): comparable to task gradients, as NeuroPrune's default with the same scale
    alpha: float = Field(
        default=1e-4,
        ge=0,
        description="Loss form: weight of the term alpha * sum |W| (NeuroPrune's R_mlp scale; 1e-4 gives every "
        "weight a gradient comparable to the task's).",
    )
    eps: float = Field(
        default=1e-4, ge=0, description="|w| <= eps counts as zero (logged as near_zero, and cut at the end)."
    )
    pattern: str = Field(
        "unstructured",
        description="Of the final cut to `target_sparsity`: unstructured (single weights) or neuron (whole FFN "
        "neurons).",
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        v = str(v).strip().lower().rstrip("s")
        if v not in ("unstructured", "neuron"):
            raise ValueError("the final cut of l1 is 'unstructured' or 'neuron'")
        return v
