"""Leaf helpers every layer uses: hashing and fingerprints, strict state loading, directory fsync, and the
fault points tests kill the process at. Nothing here imports another prunekit module but the errors."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import torch
from torch import nn

from prunekit.core.errors import PrunekitError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | Path, *, max_files: int = 256, full_hash_limit: int = 16 << 20) -> str | None:
    """What a manifest records of a path it names: '<size>:<sha256>' of a file; for a folder (a model or a saved
    dataset), 'dir:' + a sha256 over its files' relative names, sizes and contents (files up to
    `full_hash_limit` bytes; two levels deep). None for anything else or a folder of more than `max_files`."""
    path = Path(path).expanduser()
    try:
        if path.is_file():
            return f"{path.stat().st_size}:{sha256_file(path)}"
        if not path.is_dir():
            return None
        found: list[Path] = []
        for sub in (path, *sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))):
            found += [f for f in sub.iterdir() if f.is_file() and not f.name.startswith(".")]
            if len(found) > max_files:
                return None
        h = hashlib.sha256()
        for f in sorted(found):
            size = f.stat().st_size
            h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
            h.update((sha256_file(f) if size <= full_hash_limit else "").encode())
        return f"dir:{h.hexdigest()}"
    except OSError:
        return None


def matches(path: str | Path, recorded: str) -> bool:
    """Whether `path` still has the fingerprint `recorded` (a file's size is compared before it is hashed)."""
    path = Path(path).expanduser()
    try:
        if recorded.startswith("dir:"):
            return path.is_dir() and fingerprint(path) == recorded
        size, _, digest = recorded.partition(":")
        return path.is_file() and size.isdigit() and path.stat().st_size == int(size) and sha256_file(path) == digest
    except OSError:
        return False


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], problem: str, fix: str) -> nn.Module:
    """Every key must match but the model's tied ones (stored once, re-tied here); else `problem`, the keys, `fix`."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise PrunekitError(f"{problem} (missing {missing[:3]}, unexpected {unexpected[:3]}); {fix}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


_FAULT_COUNTS: dict[str, int] = {}


def fault_point(kind: str) -> None:
    """TEST HOOK, inert unless the environment sets PRUNEKIT_FAULT_AT="KIND:N": then the process SIGKILLs itself
    (no cleanup, no flush: like `kill -9`) the N-th time it reaches the fault point KIND. Points:
    `checkpoint` midway through writing a checkpoint (weights written, the rest not), `step` right after an
    optimizer step, `save` midway through writing a model folder (weights written, manifest not).
    "KIND:N:INT" or "KIND:N:TERM" sends SIGINT / SIGTERM instead of SIGKILL.
    Used by tests/test_faults.py."""
    spec = os.environ.get("PRUNEKIT_FAULT_AT")
    if not spec:
        return
    want, _, rest = spec.partition(":")
    count, _, sig = rest.partition(":")  # "KIND:N:INT" / "KIND:N:TERM" send that signal instead (Ctrl-C tests)
    if want != kind:
        return
    _FAULT_COUNTS[kind] = _FAULT_COUNTS.get(kind, 0) + 1
    if _FAULT_COUNTS[kind] == int(count or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}", signal.SIGTERM))
