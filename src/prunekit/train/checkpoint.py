"""Atomic training checkpoints: a run killed at any moment resumes from the last complete one.

A checkpoint is a folder `step-NNNNNNN` written as a hidden temporary sibling and renamed into place,
so a folder with that name is always complete; a `COMPLETE` marker with a checksum of every file
guards against later damage. A checkpoint that fails to load is skipped with a warning and the
previous one is used. Tensors are read with safetensors or `torch.load(weights_only=True)`.

`fault_point` is a test hook (inert unless PRUNEKIT_FAULT_AT is set) that kills the process at a chosen
moment, e.g. midway through writing a checkpoint, so tests can check that a killed run resumes exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from prunekit.core.errors import PrunekitError
from prunekit.core.files import fault_point, fsync_dir, sha256_file

PREFIX = "step-"
MARKER = "COMPLETE"


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> tuple:
    """numpy's RNG state with its array as a tensor, so `torch.load(weights_only=True)` reads it back."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, unshared copies: safetensors refuses tensors that share memory (tied embeddings)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(root: Path, step: int, *, model_state: dict, trainer_state: dict, extra: dict, keep: int) -> Path:
    """Write checkpoint `step` under `root` atomically, then drop all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(state_tensors(model_state), str(tmp / "model.safetensors"))
    fault_point("checkpoint")
    torch.save(extra, tmp / "state.pt")
    (tmp / "trainer.json").write_text(json.dumps(trainer_state))
    sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    (tmp / MARKER).write_text(json.dumps(sums))
    for p in tmp.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(model_state, trainer_state, extra) of one checkpoint; raises PrunekitError if damaged."""
    marker = path / MARKER
    if not marker.exists():
        raise PrunekitError(f"checkpoint {path} is incomplete")
    sums = json.loads(marker.read_text())
    for name, digest in sums.items():
        f = path / name
        if not f.exists() or sha256_file(f) != digest:
            raise PrunekitError(f"checkpoint {path} is damaged ({name} does not match its checksum)")
    model_state = load_file(str(path / "model.safetensors"))
    extra = torch.load(path / "state.pt", weights_only=True)
    trainer_state = json.loads((path / "trainer.json").read_text())
    return model_state, trainer_state, extra


def has_checkpoint(work: Path) -> bool:
    """Whether a run's partial folder holds a complete checkpoint of any training stage (work worth resuming)."""
    stages = (work / "checkpoints").iterdir() if (work / "checkpoints").is_dir() else []
    return any(list_checkpoints(p) for p in stages)


def latest_usable(root: Path) -> tuple[Path, tuple[dict, dict, dict]] | None:
    """The newest checkpoint that loads; damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return path, load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read means: fall back to the previous one
            warnings.warn(f"skipping checkpoint {path.name}: {exc}; falling back to the previous one", stacklevel=2)
    return None
