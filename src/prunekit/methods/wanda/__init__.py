"""One-shot weight pruning from calibration data: Wanda (|W| * ||X||, per output row or N:M group).

The tools people use to prune large decoders are one-shot: a few hundred calibration sequences, no training. Wanda
scores each weight by its magnitude times the norm of the input feature it reads on those sequences, so features
that are always large keep their weights even where the weights are small (weight magnitude alone removes them:
SmolLM2's first layers have such features). The recipe's training stage, if any, keeps the zeros; with
`train: {epochs: 0}` the run is one-shot.
"""

from prunekit.methods.wanda.config import WandaConfig
from prunekit.methods.wanda.method import Wanda

__all__ = ["Wanda", "WandaConfig"]
