"""Registers the NAS super-network training method (`method: {name: nas}`); it lives in `prunekit.nas`."""

from prunekit.nas.supernet import NAS, NASConfig

__all__ = ["NAS", "NASConfig"]
