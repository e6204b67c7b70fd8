"""Python entry points; the CLI is a thin layer over these."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import UsageError
from prunekit.masks import MaskSet, masks_from_zeros, merge, sparsity_report
from prunekit.patterns import check_sparsity, parse_pattern


def parse_prune_spec(spec: str) -> tuple[str, float | None]:
    """'heads=0.5', 'neurons=0.3', 'rows=0.2', 'unstructured=0.7', '32x32=0.6', '2:4' -> (pattern, sparsity)."""
    kind, _, value = spec.partition("=")
    kind = kind.strip()
    pattern = parse_pattern(kind)
    if pattern.kind == "nm":
        if value:
            raise UsageError(f"'{spec}': an N:M pattern fixes its own sparsity; write just '{pattern}'")
        return str(pattern), 1.0 - pattern.n / pattern.m
    if not value:
        raise UsageError(f"'{spec}': give the fraction to remove, e.g. {kind}=0.5")
    try:
        sparsity = float(value)
    except ValueError as exc:
        raise UsageError(f"'{spec}': '{value}' is not a number; give the fraction to remove, e.g. 0.5") from exc
    return str(pattern), check_sparsity(sparsity)


def load_source(
    source: str,
    *,
    task_head: str = "sequence-classification",
    num_labels: int | None = None,
    trust_remote_code: bool = False,
):
    """(model, tokenizer, manifest or None) from a run directory or a model name / folder / hub id."""
    from prunekit.catalog import load_model
    from prunekit.io import MANIFEST, load, read_manifest

    if (Path(source) / MANIFEST).exists():
        model, tok = load(source, with_tokenizer=True)
        return model, tok, read_manifest(source)
    model, tok = load_model(source, task=task_head, num_labels=num_labels, trust_remote_code=trust_remote_code)
    return model.eval(), tok, None


def magnitude_prune(model: nn.Module, specs: list[str], scope: str = "global") -> MaskSet:
    from prunekit.methods.magnitude import magnitude_masks

    if not specs:
        raise UsageError("nothing to prune: give at least one --prune, e.g. --prune heads=0.5")
    sets = []
    for spec in specs:
        pattern, sparsity = parse_prune_spec(spec)
        sets.append(magnitude_masks(model, pattern=pattern, sparsity=sparsity, scope=scope))
    return merge(*sets)


def compact_source(
    source: str,
    out_dir: str,
    *,
    prune: list[str] | None = None,
    scope: str = "global",
    task_head: str = "sequence-classification",
    num_labels: int | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Prune by magnitude (if asked) and physically remove what is pruned; save a run directory.

    Without `prune`, removes structure that is already zero (e.g. a run that masked in place)."""
    from prunekit.compact import compact
    from prunekit.io import save

    if Path(out_dir).exists() and not overwrite:
        raise UsageError(f"output directory '{out_dir}' exists: choose another path or pass --overwrite")
    start = time.perf_counter()
    model, tokenizer, manifest = load_source(
        source, task_head=task_head, num_labels=num_labels, trust_remote_code=trust_remote_code
    )
    masks = magnitude_prune(model, prune, scope) if prune else masks_from_zeros(model)
    mask_report = sparsity_report(model, masks)
    with torch.no_grad():
        compact(model, masks)
    source_model = manifest.source_model if manifest else source
    save(
        model,
        out_dir,
        tokenizer,
        overwrite=overwrite,
        source_model=source_model,
        method="magnitude" if prune else "compact",
        recipe={"prune": prune or [], "scope": scope},
        patterns=masks.patterns and {k: v for k, v in masks.patterns.items()},
        sparsity={"mask": _summary(mask_report), "saved": _summary(sparsity_report(model))},
        timings={"compact_s": round(time.perf_counter() - start, 2)},
    )
    return {"out_dir": out_dir, "mask_sparsity": mask_report["sparsity"]}


def _summary(report: dict) -> dict:
    return {k: report[k] for k in ("params", "kept", "sparsity")} | {
        "heads_per_layer": [r["heads"] for r in report["layers"]],
        "ffn_width_per_layer": [r["ffn_width"] for r in report["layers"]],
    }


def reference_for(run_dir: str) -> nn.Module:
    """The dense model a run started from, with the same head, for side-by-side measurements."""
    from prunekit.catalog import load_model
    from prunekit.io import read_manifest

    manifest = read_manifest(run_dir)
    if not manifest.source_model:
        raise UsageError(f"'{run_dir}' records no source model: pass --reference MODEL")
    from prunekit.io import load

    pruned = load(run_dir)
    labels = getattr(pruned.config, "num_labels", None) if manifest.task_head != "causal-lm" else None
    model, _ = load_model(manifest.source_model, task=manifest.task_head, num_labels=labels)
    return model.eval()


def evaluate_run(
    run_dir: str,
    *,
    data: str | None = None,
    columns: dict[str, str] | None = None,
    split: str = "test",
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Metrics of a run's model on its own split (re-made from the manifest's split recipe) or on a user file."""
    from prunekit.io import load, read_manifest
    from prunekit.tasks import evaluation_data, get_task, load_data

    manifest = read_manifest(run_dir)
    info = manifest.task or {}
    if "kind" not in info:
        raise UsageError(f"'{run_dir}' records no task (it was not trained by prunekit): evaluate needs one")
    task = get_task(info["kind"], **(info.get("options") or {}))
    model, tok = load(run_dir, with_tokenizer=True)
    recipe = manifest.recipe or {}
    max_length = max_length or (recipe.get("train") or {}).get("max_length", 128)
    if data is not None:
        dataset = evaluation_data(
            data, task=task.kind, columns=columns or info.get("columns"), label_names=info.get("label_names")
        )
        where = data
    else:
        if split not in ("validation", "test"):
            raise UsageError(f"--split '{split}' is not validation or test")
        s = manifest.split or {}
        d = recipe.get("data") or {}
        splits, _ = load_data(
            d.get("dataset", info.get("dataset")),
            task=task.kind,
            columns=d.get("columns"),
            data_dir=d.get("data_dir"),
            seed=s.get("seed", d.get("seed", 0)),
            validation_fraction=d.get("validation_fraction", 0.1),
            test_fraction=d.get("test_fraction", 0.1),
            max_examples=d.get("max_examples"),
        )
        dataset, where = splits[split], split
    metrics = task.evaluate(model, dataset, tok, batch_size=batch_size, max_length=max_length)
    return {"data": where, "examples": len(dataset), **metrics}
