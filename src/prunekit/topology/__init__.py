"""Architecture adapters: what is prunable in each supported model family."""

from prunekit.topology.base import (
    AttentionSpec,
    BlockSpec,
    FFNSpec,
    Topology,
    get_module,
    linear_shape,
    weight_view,
)
from prunekit.topology.families import SUPPORTED_MODEL_TYPES, describe, family_of

__all__ = [
    "AttentionSpec",
    "BlockSpec",
    "FFNSpec",
    "SUPPORTED_MODEL_TYPES",
    "Topology",
    "describe",
    "family_of",
    "get_module",
    "linear_shape",
    "weight_view",
]
