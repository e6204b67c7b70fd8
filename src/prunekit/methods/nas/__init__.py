"""Structural pruning by multi-objective NAS (Klein et al., TMLR 2024; METHODS.md 4).

Stage 1 trains the fine-tuned model as a weight-sharing super-network (`supernet.NAS`, trainer method `nas`);
stage 2 searches its sub-networks for the Pareto set of quality against size or latency (`search`), without
training; `run` writes the search directory and extracts chosen points as ordinary run directories.
Modules: `config` (the recipe sections), `space` (search spaces), `reorder` (importance permutation), `cost`
(parameters / FLOPs of a sub-network), `pareto` (front, hypervolume), `search` (searchers), `baselines`; the
masks in the forward are `prunekit.importance.gates`.
"""

from prunekit.methods.nas.config import NASConfig, SearchSpec
from prunekit.methods.nas.supernet import NAS

__all__ = ["NAS", "NASConfig", "SearchSpec"]
