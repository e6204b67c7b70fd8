"""NeuroPrune (Dhurandhar et al., ACL Findings 2024; METHODS.md section 1): dynamic sparse fine-tuning with
preferential-attachment L1, attention group sparsity and redundant-head merging. `config` holds the recipe
section, `method` the trainer method, `heads` the redundant-head step."""

from prunekit.methods.neuroprune.config import NeuroPruneConfig
from prunekit.methods.neuroprune.method import NeuroPrune

__all__ = ["NeuroPrune", "NeuroPruneConfig"]
