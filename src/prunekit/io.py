"""Run directories: save a (pruned) model with its manifest, load it back with its per-layer shapes.

Layout (see ARCHITECTURE.md): model.safetensors, config.json, tokenizer files, prunekit.json.
Everything is written into a temporary sibling and renamed at the end, so a failed save leaves
nothing behind. Weights are only read with safetensors: loading never unpickles.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from prunekit import __version__
from prunekit.errors import PrunekitError, UsageError
from prunekit.masks import sparsity_report
from prunekit.structure import plain_loadable, rebuild, structure

MANIFEST = "prunekit.json"
WEIGHTS = "model.safetensors"
MANIFEST_VERSION = 1


class LayerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layer: int
    attention: str
    heads: int
    kv_heads: int
    attn_rows: int | None = None
    ffn: str
    ffn_width: int
    ffn_rows: int | None = None


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


_HEAD_OF_CLASS = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForCausalLM", "causal-lm"),
)


def task_head_of(model: nn.Module) -> str:
    name = type(model).__name__
    return next((head for suffix, head in _HEAD_OF_CLASS if name.endswith(suffix)), "base")


@contextmanager
def staged_dir(out_dir: str | Path, overwrite: bool = False):
    """Yield a temporary sibling of `out_dir`; on success rename it into place, on failure remove it."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise UsageError(f"output directory '{out}' exists: choose another path or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def write_model(model: nn.Module, folder: Path, tokenizer=None, **manifest_fields: Any) -> Manifest:
    """Write model, tokenizer and manifest into an existing folder."""
    manifest = build_manifest(model, **manifest_fields)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def save(
    model: nn.Module, out_dir: str | Path, tokenizer=None, *, overwrite: bool = False, **manifest_fields: Any
) -> Path:
    """Save a run directory atomically; refuses an existing directory unless `overwrite`."""
    with staged_dir(out_dir, overwrite) as tmp:
        write_model(model, tmp, tokenizer, **manifest_fields)
    return Path(out_dir)


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
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None or not name.startswith(tuple(_supported_prefixes())):
        raise PrunekitError(f"manifest names model class '{name}', which prunekit does not load")
    return cls


def _supported_prefixes() -> list[str]:
    return [
        "Bert",
        "Roberta",
        "XLMRoberta",
        "Camembert",
        "Electra",
        "MPNet",
        "DistilBert",
        "Llama",
        "Mistral",
        "Qwen2",
        "GPT2",
    ]


def load(run_dir: str | Path, *, device: str | torch.device = "cpu", with_tokenizer: bool = False):
    """Rebuild the saved model with its per-layer shapes and load its weights (strict)."""
    from transformers import AutoConfig

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.exists():
        raise UsageError(f"'{run_dir}' has no {WEIGHTS}: the run did not finish; re-run it")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise PrunekitError(f"{weights} is corrupt or truncated ({exc}); restore it or re-run the job") from exc
    config = AutoConfig.from_pretrained(run_dir, trust_remote_code=False)
    model = _model_class(manifest.model_class)(config)
    rebuild(model, [e.model_dump() for e in manifest.structure])
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise PrunekitError(
            f"{weights} does not match its manifest (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); restore the run directory or re-run the job"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.to(device).eval()
    if with_tokenizer:
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(run_dir)
    return model
