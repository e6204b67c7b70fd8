"""Physical removal of pruned structure (compacted == masked) and the per-layer shapes a manifest records."""

from prunekit.compact.remove import check_equal, compact, rebuild
from prunekit.compact.structure import structure

__all__ = ["check_equal", "compact", "rebuild", "structure"]
