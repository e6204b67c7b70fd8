"""Where a run starts: a run directory or a model name / folder / hub id, its fingerprint, and the sparsity summary a
manifest records."""

from __future__ import annotations

from pathlib import Path

import torch

from prunekit.catalog import load_model
from prunekit.catalog.models import MODELS
from prunekit.core.files import fingerprint
from prunekit.runs.directory import MANIFEST
from prunekit.runs.io import load, read_manifest


def load_source(
    source: str,
    *,
    task_head: str = "sequence-classification",
    num_labels: int | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
):
    """(model, tokenizer, manifest or None) from a run directory or a model name / folder / hub id.

    A task head the checkpoint lacks is initialised from `seed` (the global RNG is left as it was): unseeded, the
    same recipe started from a different head in every process and its results did not reproduce."""
    if (Path(source) / MANIFEST).exists():
        # a training source: plain linears (checks the tokenizer against the embedding)
        model, tok = load(source, with_tokenizer=True, block_sparse="never")
        return model, tok, read_manifest(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tok = load_model(source, task=task_head, num_labels=num_labels, trust_remote_code=trust_remote_code)
    return model.eval(), tok, None


def source_fingerprint(source: str) -> str | None:
    """The fingerprint of a source model given as a folder (None for catalog names and hub ids)."""
    return fingerprint(source) if source not in MODELS and Path(source).expanduser().is_dir() else None


def sparsity_summary(report: dict) -> dict:
    """The manifest's sparsity figures: totals and the heads / FFN width kept per layer."""
    return {k: report[k] for k in ("params", "kept", "sparsity")} | {
        "heads_per_layer": [r["heads"] for r in report["layers"]],
        "ffn_width_per_layer": [r["ffn_width"] for r in report["layers"]],
    }
