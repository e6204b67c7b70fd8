"""NxMTransformer (Holmes et al. 2021; METHODS.md section 2): N:M sparsity by ADMM (`admm`), and the one-shot
magnitude N:M baseline it beats (`asp`). `config` holds the recipe sections, `method` the trainer methods."""

from prunekit.methods.nxm.config import AdmmConfig, AspConfig
from prunekit.methods.nxm.method import Admm, Asp

__all__ = ["Admm", "AdmmConfig", "Asp", "AspConfig"]
