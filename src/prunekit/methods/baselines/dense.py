"""`dense`: plain fine-tuning, no pruning (the reference every pruned run is compared with)."""

from __future__ import annotations

from prunekit.methods.base import Method, MethodConfig, register


@register
class Dense(Method):
    """Plain fine-tuning: no pruning."""

    name = "dense"
    config_class = MethodConfig
    is_baseline = True
