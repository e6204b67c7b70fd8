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
from prunekit.topology.families import (
    SUPPORTED_MODEL_TYPES,
    config_heads,
    describe,
    embedding_segments,
    family_of,
    ffn_width_key,
    heads_in_config,
    is_decoder,
    layers_key,
    learned_positions,
    max_positions,
    position_offset,
    supported_class_prefixes,
)

__all__ = [
    "AttentionSpec",
    "BlockSpec",
    "FFNSpec",
    "SUPPORTED_MODEL_TYPES",
    "Topology",
    "config_heads",
    "describe",
    "embedding_segments",
    "family_of",
    "ffn_width_key",
    "get_module",
    "heads_in_config",
    "is_decoder",
    "layers_key",
    "learned_positions",
    "linear_shape",
    "max_positions",
    "position_offset",
    "supported_class_prefixes",
    "weight_view",
]
