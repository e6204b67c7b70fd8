"""Recipe section of `wanda`: one-shot weight pruning by |W| * ||X|| on calibration data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from prunekit.methods.base import MethodConfig
from prunekit.patterns import parse_pattern


class WandaConfig(MethodConfig):
    """Recipe section of `wanda` (METHODS.md 6): every block linear's weights scored once by magnitude times the
    norm of the input feature they read, the lowest removed per output row (or per N:M group), before training."""

    sparsity: float = Field(0.5, ge=0, lt=1, description="Fraction of every output row's weights removed "
                            "(unstructured pattern).")  # fmt: skip
    pattern: str = Field("unstructured", description="unstructured, or N:M (e.g. 2:4: N kept of every M inputs).")
    calibration_examples: int = Field(128, ge=1, description="Training examples whose activations are measured.")
    pad_tail: bool = Field(False, description="N:M only: keep a last partial group of inputs dense.")
    score: Literal["wanda", "magnitude"] = Field(
        "wanda", description="wanda: |W| * ||X||; magnitude: |W| alone, compared the same way (the reference: no data)."
    )

    @field_validator("pattern")
    @classmethod
    def _known(cls, value: str) -> str:
        kind = parse_pattern(value).kind
        if kind not in ("unstructured", "nm"):
            raise ValueError(f"wanda prunes weights: pattern unstructured or N:M, not {value!r}")
        return value
