"""Importance of the structural units a topology defines (attention heads, FFN neurons; whole attention / FFN
sublayers and the output rows they write, `sublayers`), and which to keep.

One signature for every criterion: `unit_scores(model, criterion, batches)` gives a score per query head and per
FFN neuron of every layer (higher = more important), from the weights alone (`magnitude`) or measured on
calibration batches (`taylor`, `fisher`, `activation`). `unit_masks` turns scores into the masks compaction
removes (per layer or one global ranking, a minimum per layer, grouped-query attention kept uniform per KV group).
Methods and NAS's importance reordering score through here.
"""

from prunekit.importance.scores import CRITERIA, DATA_CRITERIA, UnitScores, unit_scores
from prunekit.importance.select import keep_counts, select_heads, sublayer_masks, unit_masks
from prunekit.importance.sublayers import SublayerScores, sublayer_scores

__all__ = [
    "CRITERIA",
    "DATA_CRITERIA",
    "SublayerScores",
    "UnitScores",
    "keep_counts",
    "select_heads",
    "sublayer_masks",
    "sublayer_scores",
    "unit_masks",
    "unit_scores",
]
