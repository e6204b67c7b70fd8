"""Python entry points; the CLI is a thin layer over these (it reaches the library only through this module)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit import bench, report
from prunekit.catalog import datasets as dataset_catalog
from prunekit.catalog import load_model, models_table
from prunekit.catalog.datasets import DATASETS
from prunekit.catalog.models import MODELS
from prunekit.compact.remove import compact
from prunekit.core.errors import UsageError
from prunekit.costs import measure_unit_costs
from prunekit.importance.magnitude import magnitude_masks
from prunekit.masks import MaskSet, check_keeps_attention, masks_from_zeros, merge, sparsity_report
from prunekit.methods.base import REGISTRY, method_names
from prunekit.patterns import check_sparsity, parse_pattern
from prunekit.pipelines.prune import run_recipe
from prunekit.pipelines.search import extract, run_search
from prunekit.recipe import apply_overrides, load_recipe, parse_recipe
from prunekit.report import write_report
from prunekit.runs import int8
from prunekit.runs.directory import check_target, check_task_given, check_writable
from prunekit.runs.export import export_onnx
from prunekit.runs.io import MANIFEST, load, read_manifest, recorded_path, save, verify_weights
from prunekit.runs.source import load_source, source_fingerprint, sparsity_summary
from prunekit.tasks import evaluation_data, get_task, load_data

# what the CLI and users reach through this module, beside the functions defined here
__all__ = [
    "REGISTRY", "apply_overrides", "bench", "compact_source", "cuda_available", "dataset_catalog", "default_threads",
    "bench_int8", "evaluate_run", "export_int8", "export_onnx", "extract", "load", "load_model", "load_recipe",
    "load_source", "magnitude_prune", "method_names", "models_table", "parse_recipe", "read_manifest",
    "reference_for", "report", "run_recipe", "run_search", "save", "unit_costs", "verify_weights", "write_report",
]  # fmt: skip


def default_threads() -> int:
    """The torch threads a measurement uses when none is given: all of this process's."""
    return torch.get_num_threads()


COSTS_KIND = "prunekit unit costs"  # the mark of a file `prunekit costs` wrote (and may overwrite)


def unit_costs(source: str, *, batch: int, seq: int, threads: int | None, out: str | None, overwrite: bool) -> dict:
    """Measure what heads and FFN neurons of a model cost here (for `structured`'s scope latency, `costs: FILE`);
    written to `out` in one go when given. A file there is replaced only if `prunekit costs` wrote it and
    `overwrite` is set."""
    target = Path(out) if out is not None else None
    if target is not None:
        _check_costs_target(target, overwrite)
    head = read_manifest(source).task_head if (Path(source) / MANIFEST).exists() else "base"
    model, _, _ = load_source(source, task_head=head)
    costs = measure_unit_costs(model.eval(), batch=batch, seq_len=seq, threads=threads)
    result = {"kind": COSTS_KIND, "model": source, "threads": threads or torch.get_num_threads(), **costs.to_dict()}
    if target is not None:
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(target)
    return result


def _check_costs_target(target: Path, overwrite: bool) -> None:
    if target.is_dir():
        raise UsageError(f"--out {target} is a folder: give a file name, e.g. {target / 'costs.json'}")
    if not target.parent.is_dir():
        raise UsageError(f"--out {target}: its folder {target.parent} does not exist: create it first")
    if not target.exists():
        return
    try:
        ours = json.loads(target.read_text()).get("kind") == COSTS_KIND
    except (ValueError, AttributeError, OSError):
        ours = False
    if not ours:
        raise UsageError(f"--out {target} exists and is not a costs file prunekit wrote: choose another name")
    if not overwrite:
        raise UsageError(f"--out {target} exists: add --overwrite to replace it, or choose another name")


def dataset_task(name: str) -> str | None:
    """The task kind of a catalog dataset (None for the user's own file)."""
    return DATASETS[name].task if name in DATASETS else None


def cuda_available() -> bool:
    return torch.cuda.is_available()


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


def magnitude_prune(model: nn.Module, specs: list[str], scope: str = "global") -> MaskSet:
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
    storage: str = "auto",
) -> dict[str, Any]:
    """Prune by magnitude (if asked) and physically remove what is pruned; save a run directory.

    Without `prune`, removes structure that is already zero (e.g. a run that masked in place)."""
    inputs = [source] if Path(source).expanduser().exists() else []
    check_writable(Path(out_dir))
    check_target(Path(out_dir), overwrite=overwrite, inputs=inputs)
    start = time.perf_counter()
    model, tokenizer, manifest = load_source(
        source, task_head=task_head, num_labels=num_labels, trust_remote_code=trust_remote_code
    )
    masks = magnitude_prune(model, prune, scope) if prune else masks_from_zeros(model)
    check_keeps_attention(model, masks)
    mask_report = sparsity_report(model, masks)
    with torch.no_grad():
        compact(model, masks)

    source_model = manifest.source_model if manifest else source
    save(
        model,
        out_dir,
        tokenizer,
        overwrite=overwrite,
        inputs=inputs,
        storage=storage,
        source_model=source_model,
        source_fingerprint=manifest.source_fingerprint if manifest else source_fingerprint(source),
        method="magnitude" if prune else "compact",
        recipe={"prune": prune or [], "scope": scope, **_evaluation_record(manifest)},
        **({"task": manifest.task, "split": manifest.split} if manifest and manifest.task else {}),
        patterns=masks.patterns and {k: v for k, v in masks.patterns.items()},
        sparsity={"mask": sparsity_summary(mask_report), "saved": sparsity_summary(sparsity_report(model))},
        timings={"compact_s": round(time.perf_counter() - start, 2)},
    )
    return {"out_dir": out_dir, "mask_sparsity": mask_report["sparsity"]}


def _evaluation_record(manifest) -> dict[str, Any]:
    """What `evaluate` reads of a trained source run (its data recipe and sequence length), so that a run compacted
    from it is scored on the same held-out split, the same way; nothing for a plain model."""
    if manifest is None or not manifest.task:
        return {}
    recipe = manifest.recipe or {}
    record: dict[str, Any] = {"train": {"max_length": (recipe.get("train") or {}).get("max_length", 128)}}
    return record | ({"data": recipe["data"]} if recipe.get("data") else {})


def reference_for(run_dir: str) -> nn.Module:
    """The dense model a run started from, with the same head, for side-by-side measurements: the run's own dense
    fine-tune (its `dense/` folder, what the run's dense metrics measured) where the recipe had one."""
    manifest = read_manifest(run_dir)
    if (Path(run_dir) / "dense" / MANIFEST).is_file():
        return load(Path(run_dir) / "dense", block_sparse="never").eval()
    if not manifest.source_model:
        raise UsageError(f"'{run_dir}' records no source model: pass --reference MODEL")

    source = _recorded_model(run_dir, manifest)
    pruned = load(run_dir)
    labels = getattr(pruned.config, "num_labels", None) if manifest.task_head != "causal-lm" else None
    model, _ = load_model(source, task=manifest.task_head, num_labels=labels)
    return model.eval()


def _recorded_model(run_dir: str, manifest) -> str:
    """The manifest's source model: a catalog name or hub id as is; a folder only if it still has the recorded
    fingerprint (a manifest cannot point prunekit at other paths, '../..' or absolute)."""
    name = manifest.source_model
    if name in MODELS or not _looks_like_path(name):
        return name
    fix = "pass --reference MODEL to name the dense model to compare with yourself"
    return recorded_path(run_dir, name, manifest.source_fingerprint, what="source model", fix=fix)


def _looks_like_path(value: str) -> bool:
    """A path (absolute, '~', '.', '..', or existing here) rather than a hub id such as 'org/model'."""
    p = Path(value)
    return p.is_absolute() or value.startswith(("~", ".")) or ".." in p.parts or p.exists()


def _recorded_data(run_dir: str, manifest, d: dict) -> tuple[str, str | None]:
    """(dataset, data_dir) of the run's own split, made safe: a catalog name as is (its data_dir only if the
    files there match the recorded checksums), a file or folder only with the recorded fingerprint."""
    info = manifest.task or {}
    split = manifest.split or {}
    dataset, data_dir = d.get("dataset", info.get("dataset")), d.get("data_dir")
    fix = "pass --data FILE to evaluate on a file you name"
    if not isinstance(dataset, str) or not dataset:
        raise UsageError(f"'{run_dir}' records no dataset: {fix}")
    if dataset not in DATASETS:
        return recorded_path(run_dir, dataset, split.get("fingerprint"), what="data file", fix=fix), None
    if data_dir is not None:
        files = split.get("files") or []
        names = [f.get("name") for f in files if isinstance(f, dict)]
        if not names or any(not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..") for n in names):
            raise UsageError(f"'{run_dir}' records data_dir '{data_dir}' without its files' checksums: {fix}")
        for f in files:
            recorded = f"{f.get('bytes')}:{f.get('sha256')}"  # the catalog's record of a prepared file
            recorded_path(run_dir, str(Path(data_dir) / f["name"]), recorded, what="data file", fix=fix)
    return dataset, data_dir


def export_int8(run_dir: str, path: str | Path) -> dict[str, Any]:
    """The run's model as an int8 ONNX file (ONNX Runtime dynamic quantization of the checked fp32 export)."""
    return int8.export_int8(load(run_dir, block_sparse="never"), path)


def bench_int8(
    run_dir: str,
    reference: nn.Module,
    *,
    grid: tuple[tuple[int, int], ...],
    threads: int,
    repeats: int,
    warmup: int,
    split: str = "test",
    evaluate: bool = True,
) -> dict[str, Any]:
    """int8 on top of pruning, in one process: dense fp32, pruned fp32 and the pruned model quantized by each
    backend (int8.BACKENDS), timed in turns at every grid point and (with `evaluate`) scored on the run's
    `split`; dense fp32's score is the run's record of the model it pruned where it has one (the reference
    timed here may be a differently trained model of the same shape). Speedups are against dense fp32."""
    pruned = load(run_dir, block_sparse="never").eval()
    variants: dict[str, nn.Module] = {"dense fp32": reference.eval(), "pruned fp32": pruned}
    made: dict[str, Any] = {}
    variants["pruned int8 (torch)"], made["torch"] = int8.torch_int8(pruned)
    with tempfile.TemporaryDirectory(prefix="prunekit-int8-") as tmp:
        info = int8.export_int8(pruned, Path(tmp) / "model.int8.onnx")
        made["onnxruntime"] = {k: info[k] for k in ("exporter", "int8_max_abs_diff", "quantized")}
        variants["pruned int8 (onnxruntime)"] = int8.OnnxModel(info["path"], pruned.config, threads=threads)
        vocab = min(pruned.config.vocab_size, reference.config.vocab_size)
        latency = []
        for batch, seq in grid:
            ms = bench.interleaved_latency(variants, batch=batch, seq_len=seq, vocab_size=vocab, warmup=warmup,
                                           repeats=repeats, threads=threads, settle=1)  # fmt: skip
            dense = ms["dense fp32"]
            latency.append({"batch": batch, "seq_len": seq, "median_ms": ms,
                            "speedup": {k: dense / v for k, v in ms.items()}})  # fmt: skip
        metrics: dict[str, Any] = {}
        unscored = None
        manifest = read_manifest(run_dir)
        if evaluate and not (manifest.task or {}).get("kind"):
            unscored = f"'{run_dir}' records no task and split to score on (a `compact` of a plain model)"
        elif evaluate:
            recorded = (manifest.metrics or {}).get("dense", {}).get(split)
            for name, model in variants.items():
                if name == "dense fp32" and recorded:  # what the run measured of the model it pruned
                    metrics[name] = {**recorded, "recorded": True}
                else:
                    metrics[name] = evaluate_run(run_dir, split=split, model=model)
    return {"threads": threads, "latency": latency, "metrics": metrics, "split": split, "backends": made,
            "unscored": unscored}  # fmt: skip


def evaluate_run(
    run_dir: str,
    *,
    data: str | None = None,
    columns: dict[str, str] | None = None,
    split: str = "test",
    batch_size: int = 64,
    max_length: int | None = None,
    task: str | None = None,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Metrics of a run's model on its own split (re-made from the manifest's split recipe) or on a user file.
    `task` names the task kind for a run that records none (a `compact` of a plain model); it needs `data`.
    `model` evaluates another form of the run's model (e.g. int8) in its place, with the run's tokenizer."""
    if batch_size < 1:
        raise UsageError(f"batch size {batch_size} is not a batch size: give 1 or more")
    manifest = read_manifest(run_dir)
    info = manifest.task or {}
    if "kind" not in info:
        check_task_given(run_dir, task, data)
        info = {"kind": task}
    elif task is not None and task != info["kind"]:
        raise UsageError(f"--task {task}, but '{run_dir}' was trained for {info['kind']}: leave --task out")
    task_obj = get_task(info["kind"], **(info.get("options") or {}))
    recipe = manifest.recipe or {}
    max_length = max_length or (recipe.get("train") or {}).get("max_length", 128)
    if data is not None:
        dataset = evaluation_data(
            data, task=task_obj.kind, columns=columns or info.get("columns"), label_names=info.get("label_names")
        )
        where = data
    else:
        if split not in ("validation", "test"):
            raise UsageError(f"--split '{split}' is not validation or test")
        s = manifest.split or {}
        d = recipe.get("data") or {}
        dataset, data_dir = _recorded_data(run_dir, manifest, d)
        splits, _ = load_data(
            dataset,
            task=task_obj.kind,
            columns=d.get("columns"),
            data_dir=data_dir,
            seed=s.get("seed", d.get("seed", 0)),
            validation_fraction=d.get("validation_fraction", 0.1),
            test_fraction=d.get("test_fraction", 0.1),
            max_examples=d.get("max_examples"),
            drop_invalid=d.get("drop_invalid", False),
        )
        dataset, where = splits[split], split
    if len(dataset) == 0:
        raise UsageError(f"{where} has no rows to evaluate: give data with at least one example")
    saved, tok = load(run_dir, with_tokenizer=True, block_sparse="never")  # same outputs, no timing
    model = saved if model is None else model
    metrics = task_obj.evaluate(model, dataset, tok, batch_size=batch_size, max_length=max_length)
    return {"data": where, "examples": len(dataset), **metrics}
