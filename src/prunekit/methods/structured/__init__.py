"""One-shot structured pruning from calibration data, then recovery on the compacted model.

Which units go matters more than the schedule, and training the small model costs less than training the masked
big one: the dense (fine-tuned) model's attention heads and FFN neurons are scored once on calibration batches
from the training split (`criterion`: first-order Taylor by default, or Fisher, activation, magnitude; see
prunekit.importance), the lowest-scoring fractions are removed per layer (or by one global ranking, or by measured
latency per score), optionally with whole attention / FFN sublayers and output rows by the same criterion
(`sublayers`, `rows`; prunekit.importance.sublayers), the model is compacted, and the recipe's training stage
then fine-tunes the compacted model, with distillation from the dense one when the recipe has a `distill`
section. Torch-Pruning's Taylor recipe is this (with `criterion: taylor-elementwise`), without the teacher.
"""

from prunekit.methods.structured.config import StructuredConfig
from prunekit.methods.structured.method import Structured

__all__ = ["Structured", "StructuredConfig"]
