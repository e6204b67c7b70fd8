"""Recipe sections of `admm` (NxMTransformer, METHODS.md section 2) and `asp` (NVIDIA's one-shot N:M baseline),
and the N:M spelling they accept (`parse_nm`: keep N of every M, NVIDIA's order)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from prunekit.core.errors import UsageError
from prunekit.methods.oneshot.start import OneShotStartConfig
from prunekit.patterns import Pattern, parse_pattern


def parse_nm(text: str) -> Pattern:
    """An N:M pattern, or a UsageError that points at the paper's reversed spelling when that is the mistake."""
    s = str(text).strip()
    parts = s.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts) and int(parts[0]) > int(parts[1]) > 0:
        raise UsageError(
            f"invalid N:M pattern '{s}': prunekit writes N:M as 'keep N of every M' (NVIDIA's spelling), "
            f"so the paper's '{s}' is '{parts[1]}:{parts[0]}' here"
        )
    pattern = parse_pattern(s)
    if pattern.kind != "nm":
        raise UsageError(f"pattern '{s}' is not N:M: this method takes an N:M pattern such as 2:4 or 4:8")
    return pattern


class AdmmConfig(OneShotStartConfig):
    """Recipe section of `admm`. `end` is the fraction of the optimizer steps run under ADMM before the hard
    prune (then masked retraining); the paper's 10 ADMM epochs + 1 retraining epoch is end ~ 0.9."""

    pattern: str = Field(
        "2:4",
        description="N:M pattern: keep N of every M consecutive inputs (NVIDIA's spelling; the paper's 4:2 is 2:4).",
    )
    rho: float = Field(default=1e-3, gt=0, description="ADMM penalty weight rho (paper grid 1e-3, 4e-3, 1e-2).")
    # loss: through Adam the term moves W by at most ~lr per step, so on short budgets W never reaches Z and the
    # primal residual grows (measured in docs/results.md)
    w_step: Literal["loss", "proximal"] = Field(
        "proximal",
        description="proximal: after each optimizer step W moves a fraction `pull` of the way to Z - U (converges "
        "in a few hundred steps whatever the optimizer's step size); loss: the paper's (rho/2)||W - Z + U||^2 as a "
        "loss term through the optimizer.",
    )
    pull: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="Proximal W-step: fraction of the way to Z - U moved per step (grows with rho when rho grows).",
    )
    rho_growth: float = Field(
        default=1.0, ge=1.0, description="rho is multiplied by this at every Z/U update (1: constant rho)."
    )
    rho_max: float | None = Field(default=None, gt=0, description="Cap for the grown rho (unset: no cap).")
    admm_interval: Literal["epoch"] | int = Field(
        "epoch", description="When Z and U are updated: at each epoch's end, or every N optimizer steps."
    )
    end: float = Field(
        0.8,
        description="Fraction of the optimizer steps at which W is hard-pruned to its N:M projection and the mask "
        "freezes (then masked retraining; best checkpoints are selected only from here on).",
    )
    train_only_targets: bool = Field(
        False,
        description="Train only the targeted linears during ADMM, freezing embeddings, LayerNorms and the "
        "classifier (the public code's choice).",
    )
    pad_tail: bool = Field(
        False, description="Keep a trailing partial group of inputs dense instead of refusing the shape."
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return str(parse_nm(v))

    @field_validator("admm_interval")
    @classmethod
    def _interval(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 1:
            raise ValueError("admm_interval must be 'epoch' or a positive number of optimizer steps")
        return v

    @field_validator("end")
    @classmethod
    def _end(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be a fraction of the training steps, in [0, 1]")
        return float(v)


class AspConfig(OneShotStartConfig):
    """Recipe section of `asp`: only the N:M pattern (the mask is fixed at step 0, there is no schedule)."""

    pattern: str = Field(
        "2:4",
        description="N:M pattern: keep N of every M consecutive inputs, by magnitude of the fine-tuned weights.",
    )
    pad_tail: bool = Field(
        False, description="Keep a trailing partial group of inputs dense instead of refusing the shape."
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return str(parse_nm(v))
