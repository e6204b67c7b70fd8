"""One-shot weight pruning from calibration data: Wanda, SparseGPT, magnitude.

The tools people use to prune large decoders are one-shot: a few hundred calibration sequences, no training. Wanda
scores each weight by its magnitude times the norm of the input feature it reads on those sequences, so features
that are always large keep their weights even where the weights are small (weight magnitude alone removes them:
SmolLM2's first layers have such features). SparseGPT chooses by the OBS saliency w^2 / [H^-1]_jj^2 and updates
the weights that stay so the layer's outputs on the calibration inputs move least. The recipe's training stage, if
any, keeps the zeros; with `train: {epochs: 0}` the run is one-shot.
"""

from prunekit.methods.oneshot.config import OneShotConfig
from prunekit.methods.oneshot.method import OneShot

__all__ = ["OneShot", "OneShotConfig"]
