"""Bridges to training loops other than prunekit's own: `hf_trainer` for scripts built on `transformers.Trainer`."""

from prunekit.integrations.hf_trainer import PrunekitCallback, PrunekitMixin, PrunekitTrainer, finalize_and_compact

__all__ = ["PrunekitCallback", "PrunekitMixin", "PrunekitTrainer", "finalize_and_compact"]
