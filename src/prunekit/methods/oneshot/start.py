"""A training method's N:M mask started from one-shot pruning (`start_from: wanda | sparsegpt`) instead of the
magnitude of the fine-tuned weights: the weights are pruned (SparseGPT also updates the kept ones) on calibration
batches before the method attaches, and an N:M method's magnitude choice on weights that already hold the pattern
keeps exactly that mask (ASP freezes it; ADMM starts Z there)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field
from torch import nn

from prunekit.methods.base import MethodConfig
from prunekit.methods.oneshot.method import OneShot


class OneShotStartConfig(MethodConfig):
    """The recipe fields of a start from one-shot pruning (an N:M method's config derives from this)."""

    start_from: Literal["magnitude", "wanda", "sparsegpt"] = Field(
        "magnitude",
        description="The N:M mask the method starts from: magnitude of the fine-tuned weights, or one-shot Wanda / "
        "SparseGPT on calibration batches (SparseGPT also updates the weights it keeps).",
    )
    calibration_examples: int = Field(128, ge=1, description="start_from wanda / sparsegpt: calibration sequences.")


class OneShotStart:
    """Mixin for N:M methods: `calibrate` prunes the model in place by `start_from` before the method attaches."""

    progress: bool
    _start_report: dict[str, Any] | None = None

    def start_config(self) -> OneShotStartConfig:
        return self.config  # type: ignore[attr-defined]

    def calibration_examples(self) -> int:
        c = self.start_config()
        return c.calibration_examples if c.start_from != "magnitude" else 0

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        c = self.start_config()
        if c.start_from == "magnitude":
            return
        section = {"score": c.start_from, "pattern": str(c.pattern), "pad_tail": getattr(c, "pad_tail", False),
                   "calibration_examples": c.calibration_examples}  # fmt: skip
        oneshot = OneShot(section)
        oneshot.progress = self.progress
        oneshot.calibrate(model, batches)
        self._start_report = oneshot.report()

    def start_report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"start_from": self.start_config().start_from}
        return report | ({"start": self._start_report} if self._start_report else {})
