"""Recipe section of `oneshot`: one-shot weight pruning from calibration data (Wanda, SparseGPT, magnitude)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from prunekit.methods.base import MethodConfig
from prunekit.patterns import parse_pattern


class OneShotConfig(MethodConfig):
    """Recipe section of `oneshot` (METHODS.md 6): every block linear's weights pruned once on calibration data,
    per output row (or N:M group) by Wanda's |W| * ||X||, or by SparseGPT's saliency with the kept weights updated
    to reconstruct the layer's outputs, before any training."""

    sparsity: float = Field(0.5, ge=0, lt=1, description="Fraction of every output row's weights removed "
                            "(unstructured pattern).")  # fmt: skip
    pattern: str = Field("unstructured", description="unstructured, or N:M (e.g. 2:4: N kept of every M inputs).")
    calibration_examples: int = Field(128, ge=1, description="Training sequences whose activations are "
                                      "measured (a language-model split: blocks of calibration_length).")  # fmt: skip
    calibration_length: int | None = Field(None, ge=8, description="Tokens per calibration sequence (default: the "
                                           "recipe's train.max_length).")  # fmt: skip
    pad_tail: bool = Field(False, description="N:M only: keep a last partial group of inputs dense.")
    score: Literal["wanda", "sparsegpt", "magnitude"] = Field(
        "wanda",
        description="wanda: |W| * ||X|| per output row; sparsegpt: OBS saliency per block of columns, the kept "
        "weights updated to reconstruct the layer's outputs (SparseGPT); magnitude: |W| alone per row (no data).",
    )
    sequential: bool = Field(True, description="Layer by layer: each block measured with the blocks before it "
                             "already pruned (the references' procedure; one block's activations in memory). false: "
                             "every linear measured in one forward of the dense model.")  # fmt: skip
    sublayers: bool = Field(False, description="With sequential: inside each block too, the linears that read "
                            "one tensor (q / k / v, attention output, FFN inputs, FFN output) measured and pruned "
                            "in turn, each on what the pruned ones before it produce (true-sequential).")  # fmt: skip
    block: int = Field(128, ge=1, description="sparsegpt: columns pruned and updated together.")
    damp: float = Field(0.01, gt=0, description="sparsegpt: dampening of X^T X, as a fraction of its mean diagonal.")

    @field_validator("pattern")
    @classmethod
    def _known(cls, value: str) -> str:
        kind = parse_pattern(value).kind
        if kind not in ("unstructured", "nm"):
            raise ValueError(f"oneshot prunes weights: pattern unstructured or N:M, not {value!r}")
        return value
