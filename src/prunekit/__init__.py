"""prunekit: sparsify and prune pre-trained transformer language models, with measured gains.

`prunekit.load` / `prunekit.save` are resolved on first use (PEP 562): `import prunekit` and the CLI's first answer
(`--help`, a bad argument) stay free of torch and transformers. This is the package's one lazy import of its own
modules besides the CLI's (see tests/test_architecture.py)."""

from typing import Any

from prunekit.core.version import __version__

__all__ = ["__version__", "load", "save"]


def __getattr__(name: str) -> Any:
    if name in ("load", "save"):
        from prunekit.runs import io  # lazy: see the module docstring

        return getattr(io, name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
