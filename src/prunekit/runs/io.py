"""Run directories: save a (pruned) model with its manifest, load it back with its per-layer shapes.

Layout (see ARCHITECTURE.md): model.safetensors, config.json, tokenizer files, prunekit.json. A model with
N:M-sparse modules stores model.nm.safetensors (values + in-group indices, see nm_storage) instead of
model.safetensors unless dense storage is asked for: smaller on disk, loaded only by `load`.
Everything is written into a temporary sibling and renamed at the end, so a failed save leaves
nothing behind. Weights are only read with safetensors: loading never unpickles. A manifest is validated
before use, its weights checksum is checked on load, and a path it names (data file, source model) is only
used when its fingerprint still matches the one recorded when prunekit wrote it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig

from prunekit.catalog.models import _load_tokenizer, check_tokenizer
from prunekit.compact.remove import rebuild
from prunekit.compact.structure import plain_loadable, structure
from prunekit.core.errors import DISK_FULL_FIX, PrunekitError, UsageError, is_disk_full  # noqa: F401 (re-exported)
from prunekit.core.files import fault_point, load_state_strict, matches, sha256_file
from prunekit.core.version import __version__
from prunekit.kernels import pack_block_sparse
from prunekit.kernels.unstructured import pack_sparse
from prunekit.masks import sparsity_report
from prunekit.patterns import parse_pattern
from prunekit.runs.directory import MANIFEST, staged
from prunekit.runs.nm_storage import NM_WEIGHTS, decompress_state, has_nm, read_nm_file, save_nm_compressed
from prunekit.topology import supported_class_prefixes

WEIGHTS = "model.safetensors"
MANIFEST_VERSION = 1
Storage = Literal["auto", "dense"]


class LayerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layer: int = Field(ge=0)
    attention: Literal["kept", "empty", "dropped"]
    heads: int = Field(ge=0)
    kv_heads: int = Field(ge=0)
    attn_rows: int | None = Field(None, ge=0)
    ffn: Literal["kept", "dropped"]
    ffn_width: int = Field(ge=0)
    ffn_rows: int | None = Field(None, ge=0)
    attn_cols: int | None = Field(None, ge=0)  # hidden dimensions q/k/v read (gathered), None: all
    ffn_cols: int | None = Field(None, ge=0)  # hidden dimensions the FFN inputs read (gathered), None: all


class Manifest(BaseModel):
    """The contract other code relies on; validated before anything in a run directory is used."""

    model_config = ConfigDict(extra="allow")
    manifest_version: int = MANIFEST_VERSION
    prunekit_version: str
    model_class: str
    task_head: str
    source_model: str | None = None
    method: str | None = None
    recipe: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    structure: list[LayerEntry]
    patterns: dict[str, str] = {}
    sparsity: dict[str, Any] = {}
    plain_loadable: bool
    metrics: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    created: str = ""
    weights_sha256: str | None = None  # of the weights file, checked on load
    weights_format: Literal["dense", "nm"] = "dense"  # nm: N:M modules packed in model.nm.safetensors
    source_fingerprint: str | None = None  # of source_model when it is a folder (see `fingerprint`)


_HEAD_OF_CLASS = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForCausalLM", "causal-lm"),
)


def task_head_of(model: nn.Module) -> str:
    name = type(model).__name__
    return next((head for suffix, head in _HEAD_OF_CLASS if name.endswith(suffix)), "base")


def recorded_path(run_dir: str | Path, value: str, recorded: str | None, *, what: str, fix: str) -> str:
    """A path named by a run's manifest, safe to use: only when it still has the fingerprint prunekit recorded
    when it wrote the manifest. A hand-edited or foreign manifest cannot point prunekit at anything else
    (e.g. '../..' or an absolute path): the user names such a path on the command line instead."""
    path = Path(value).expanduser()
    manifest = Path(run_dir) / MANIFEST
    if not path.exists():
        raise UsageError(f"{what} '{value}' recorded in {manifest} does not exist here: {fix}")
    if not isinstance(recorded, str) or not recorded:
        raise UsageError(f"{manifest} names {what} '{value}' but records no checksum for it: {fix}")
    if not matches(path, recorded):
        raise UsageError(
            f"{what} '{value}' does not match the checksum {manifest} recorded (changed since, or not the run's "
            f"own): {fix}"
        )
    return str(path)


def build_manifest(model: nn.Module, **fields: Any) -> Manifest:
    fields.setdefault("sparsity", sparsity_report(model))
    return Manifest(
        prunekit_version=__version__,
        model_class=type(model).__name__,
        task_head=task_head_of(model),
        structure=[LayerEntry(**e) for e in structure(model)],
        plain_loadable=plain_loadable(model),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **fields,
    )


def write_model(
    model: nn.Module, folder: Path, tokenizer=None, *, storage: Storage = "auto", **manifest_fields: Any
) -> Manifest:
    """Write model, tokenizer and manifest into an existing folder; the manifest last and atomically, so a
    folder with a manifest holds a complete model. `storage`: "auto" packs N:M modules (the manifest's
    `patterns`) into model.nm.safetensors, "dense" always writes plain model.safetensors."""
    manifest = build_manifest(model, **manifest_fields)
    folder = Path(folder)
    packed = storage == "auto" and has_nm(manifest.patterns)
    if packed:
        model.config.save_pretrained(folder)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(folder)
        weights = save_nm_compressed(model, folder / NM_WEIGHTS, manifest.patterns)
        manifest.weights_format, manifest.plain_loadable = "nm", False
    else:
        model.save_pretrained(folder, safe_serialization=True)
        weights = folder / WEIGHTS
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    fault_point("save")
    if weights.exists():
        manifest.weights_sha256 = sha256_file(weights)
        _readable(weights)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, folder / MANIFEST)
    return manifest


def _readable(path: Path) -> None:
    """Weights written through a private temporary file (mode 0600) get the mode every other file of the run has."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer=None,
    *,
    overwrite: bool = False,
    storage: Storage = "auto",
    inputs: Iterable[str | Path | None] = (),
    **manifest_fields: Any,
) -> Path:
    """Save a run directory atomically; refuses an existing directory unless `overwrite` (and then replaces only a
    prunekit run, never a folder holding one of `inputs`)."""
    with staged(out_dir, overwrite, inputs) as tmp:
        write_model(model, tmp, tokenizer, storage=storage, **manifest_fields)
    return Path(out_dir)


def verify_weights(run_dir: str | Path, manifest: Manifest | None = None) -> Path:
    """The run's weights file, present and with the checksum its manifest recorded: a report or a comparison of a
    run whose weights are gone or damaged would describe a model that no longer exists."""
    run_dir = Path(run_dir)
    manifest = manifest or read_manifest(run_dir)
    weights = run_dir / (NM_WEIGHTS if manifest.weights_format == "nm" else WEIGHTS)
    if not weights.exists():
        raise UsageError(f"'{run_dir}' has no {weights.name}: the run did not finish; re-run it")
    if manifest.weights_sha256 is not None and sha256_file(weights) != manifest.weights_sha256:
        raise PrunekitError(
            f"{weights} is corrupt or truncated (checksum differs from the manifest's); restore it or re-run the job"
        )
    return weights


def read_manifest(run_dir: str | Path) -> Manifest:
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise UsageError(f"run directory '{run_dir}' does not exist: give the folder `prunekit prune` wrote")
    if not path.exists():
        raise UsageError(f"'{run_dir}' has no {MANIFEST}: it is not a prunekit run directory")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PrunekitError(f"{path} is corrupt ({exc.__class__.__name__}): restore it or re-run the job") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise PrunekitError(f"{path} is invalid at '{where}': {first['msg']}; restore it or re-run the job") from exc


def _model_class(name: str):
    cls = getattr(transformers, name, None)
    if cls is None or not name.startswith(tuple(supported_class_prefixes())):
        raise PrunekitError(f"manifest names model class '{name}', which prunekit does not load")
    return cls


BLOCK_SPARSE_MODES = ("auto", "always", "never")


def repack_block_sparse(model: nn.Module, patterns: dict[str, str], *, always: bool = False) -> int:
    """Pack the matrices whose pattern is a square block (`32x32`) where the kernel wins, and the unstructured
    ones into the sparse kernel where it wins (`always` applies to blocks only: an unstructured matrix is
    packed only where timed faster); returns how many."""
    by_block: dict[int, list[str]] = {}
    for name, text in patterns.items():
        try:
            p = parse_pattern(text)
        except UsageError:
            continue
        if p.kind == "block" and p.block[0] == p.block[1]:
            by_block.setdefault(p.block[0], []).append(name)
    packed = sum(pack_block_sparse(model, names=n, block=b, always=always)["packed"] for b, n in by_block.items())
    return packed + pack_unstructured(model, patterns)["packed"]


def pack_unstructured(model: nn.Module, patterns: dict[str, str] | None) -> dict:
    """The matrices a manifest calls unstructured, into the sparse kernel where timed faster here (the report
    of kernels.unstructured.pack_sparse; nothing timed when there are none)."""
    names = [n for n, text in (patterns or {}).items() if text == "unstructured"]
    if not names:
        return {"packed": 0, "matrices": []}
    return pack_sparse(model, names=names)


def load(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    with_tokenizer: bool = False,
    block_sparse: str = "auto",
):
    """Rebuild the saved model with its per-layer shapes and load its weights (strict). Matrices saved block-pruned
    (a `BxB` pattern in the manifest: MLPruning's step 2) go back into the block-sparse kernel where it is timed
    faster than dense on this device (`block_sparse: auto`; training's decision was for its own machine), into it
    regardless (`always`), or stay plain linears (`never`)."""
    if block_sparse not in BLOCK_SPARSE_MODES:
        raise UsageError(f"block_sparse '{block_sparse}' is not one of {', '.join(BLOCK_SPARSE_MODES)}")
    run_dir = Path(run_dir)

    manifest = read_manifest(run_dir)
    weights = verify_weights(run_dir, manifest)
    try:
        state = decompress_state(*read_nm_file(weights)) if manifest.weights_format == "nm" else load_file(weights)
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise PrunekitError(f"{weights} is corrupt or truncated ({exc}); restore it or re-run the job") from exc
    if not (run_dir / "config.json").is_file():
        raise UsageError(
            f"'{run_dir}' has no config.json: the run directory is incomplete; restore it or re-run the job"
        )
    try:
        config = AutoConfig.from_pretrained(run_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise PrunekitError(
            f"{run_dir / 'config.json'} is corrupt ({str(exc).strip().splitlines()[0]}); restore it or re-run the job"
        ) from exc
    model = _model_class(manifest.model_class)(config)
    layers = [e.model_dump() for e in manifest.structure]
    try:
        rebuild(model, layers)
    except (ValueError, RuntimeError, UsageError) as exc:
        raise PrunekitError(
            f"{run_dir / MANIFEST} does not describe this model ({exc}); restore it or re-run the job"
        ) from exc
    if [LayerEntry(**e).model_dump() for e in structure(model)] != layers:
        raise PrunekitError(
            f"{run_dir / MANIFEST}'s per-layer structure is not one this model can have; restore it or re-run the job"
        )
    fix = "restore the run directory or re-run the job"
    load_state_strict(model, state, f"{weights} does not match its manifest", fix)
    model.to(device).eval()
    if block_sparse != "never":
        repack_block_sparse(model, manifest.patterns, always=block_sparse == "always")
    if with_tokenizer:
        tokenizer = _load_tokenizer(str(run_dir), str(run_dir), trust_remote_code=False)
        check_tokenizer(model, tokenizer, str(run_dir))
        return model, tokenizer
    return model
