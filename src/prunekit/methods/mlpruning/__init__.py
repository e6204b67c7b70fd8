"""MLPruning (Yao et al. 2021; METHODS.md section 3): multilevel structured pruning with learnable Top-k
thresholds, in two steps. `config` holds the recipe section, `method` the trainer method."""

from prunekit.methods.mlpruning.config import MLPruningConfig
from prunekit.methods.mlpruning.method import MLPruning

__all__ = ["MLPruning", "MLPruningConfig"]
