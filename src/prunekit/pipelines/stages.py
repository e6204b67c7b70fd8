"""The stage functions `prunekit prune` and `prunekit search` share: load the start and the teacher, split and
describe the data, evaluate, benchmark against the dense model, write the report."""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate import PartialState
from torch import nn

from prunekit.bench import bench
from prunekit.catalog.datasets import DATASETS, _take, split_recipe
from prunekit.core.errors import UsageError
from prunekit.core.files import fingerprint
from prunekit.kernels.unstructured import unpack_sparse
from prunekit.recipe import DataSpec, Recipe
from prunekit.runs.io import pack_unstructured
from prunekit.runs.source import load_source
from prunekit.tasks import load_data
from prunekit.tasks.checks import check_max_length
from prunekit.tasks.data import dropped_rows
from prunekit.topology import describe
from prunekit.train.distill import DistillConfig, resolve_hidden_norm


def check_lengths(recipe: Recipe, model: nn.Module) -> None:
    """The recipe's sequence lengths fit the model's position embeddings (before any training)."""
    check_max_length(model.config, recipe.train.max_length)
    if recipe.finetune is not None:
        check_max_length(model.config, recipe.finetune.max_length, key="finetune.max_length")


def load_start(recipe: Recipe, task, num_labels: int | None):
    """(model, tokenizer, manifest or None) for the recipe's model, with the task's head."""
    model, tok, manifest = load_source(
        recipe.model,
        task_head=task.model_head,
        num_labels=num_labels,
        trust_remote_code=recipe.trust_remote_code,
        seed=recipe.train.seed,
    )
    if manifest is not None and manifest.task_head != task.model_head:
        raise UsageError(f"'{recipe.model}' has a {manifest.task_head} head, the task needs {task.model_head}")
    if tok is None:
        raise UsageError(
            f"'{recipe.model}' has no tokenizer files: copy the tokenizer of the model it came from into the folder"
        )
    if task.model_head == "sequence-classification" and getattr(model.config, "problem_type", None) is None:
        # transformers sets it at the first training forward: a run resumed after training would save without it
        n = model.config.num_labels
        model.config.problem_type = "single_label_classification" if n > 1 else "regression"
    return model.train(), tok, manifest


def evaluate_split(task, model: nn.Module, split, tokenizer, cfg, device=None, max_examples: int | None = None):
    """The task's metrics on one split, with the recipe's evaluation batch and sequence length."""
    return task.evaluate(model, split, tokenizer, batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
                         device=device, max_examples=max_examples)  # fmt: skip


def evaluate_splits(task, model: nn.Module, data, tokenizer, cfg) -> dict[str, dict]:
    """Validation and test metrics (the splits the data has)."""
    return {s: evaluate_split(task, model, data[s], tokenizer, cfg) for s in ("validation", "test")
            if s in data and len(data[s])}  # fmt: skip


def is_main(device: str | None) -> bool:
    """Main process under `accelerate launch` (same device choice as the trainer, which shares this state)."""
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available()).is_main_process


def load_splits(d: DataSpec):
    """(splits, task kind) of a recipe's data section: seeded splits, then the training cap.

    A `max_train_examples` above `max_examples` wins for the training split (8,000 pairs to train on with 2,000-pair
    evaluation splits); the evaluation splits are the ones `max_examples` alone gives, so `prunekit evaluate` re-makes
    the same test split from the recorded split recipe.
    """

    def load(max_examples: int | None):
        return load_data(
            d.dataset,
            task=d.task,
            columns=d.columns,
            data_dir=d.data_dir,
            seed=d.seed,
            validation_fraction=d.validation_fraction,
            test_fraction=d.test_fraction,
            max_examples=max_examples,
            drop_invalid=d.drop_invalid,
        )

    data, kind = load(d.max_examples)
    if d.max_examples is not None and d.max_train_examples is not None and d.max_train_examples > d.max_examples:
        data["train"] = load(None)[0]["train"]
    return cap_train(data, d.max_train_examples, d.seed), kind


def split_info(d: DataSpec, data) -> dict[str, Any]:
    """The split recipe a manifest records, so `prunekit evaluate` re-makes the same test split."""
    if d.dataset in DATASETS:
        split = split_recipe(
            d.dataset,
            d.seed,
            data_dir=d.data_dir,
            validation_fraction=d.validation_fraction,
            test_fraction=d.test_fraction,
            max_examples=d.max_examples,
        )
    else:  # the fingerprint lets `prunekit evaluate` trust the recorded path (see io.recorded_path)
        split = {"file": d.dataset, "seed": d.seed, "fingerprint": fingerprint(d.dataset)}

    sizes = {k: len(v) for k, v in data.items()}
    return split | {"max_train_examples": d.max_train_examples, "sizes": sizes, "dropped_rows": dropped_rows(data)}


def cap_train(data, cap: int | None, seed: int):
    """A seeded (stratified where labelled) subset of the training split; evaluation splits stay whole."""
    if cap is None or len(data["train"]) <= cap:
        return data

    train = data["train"]
    labels = train["label"] if "label" in train.column_names else None
    data["train"] = train.select(sorted(_take(list(range(len(train))), cap, labels, seed)[1]))
    return data


def task_info(task, d, data) -> dict[str, Any]:
    label = data["train"].features.get("label")
    names = list(getattr(label, "names", []) or []) or None
    return {
        "kind": task.kind,
        "dataset": d.dataset,
        "main_metric": task.main_metric,
        "columns": d.columns,
        "label_names": names,
        "options": task.options,
    }


def load_teacher(recipe: Recipe, model: nn.Module, task):
    if recipe.distill is None:
        return None, None
    spec = recipe.distill
    cfg = DistillConfig(**spec.model_dump(exclude={"teacher"}), teacher=spec.teacher)
    cfg = resolve_hidden_norm(cfg, describe(model).pre_norm)
    if spec.teacher == "dense":  # the dense fine-tuned stage, or the starting model when it is already fine-tuned
        return copy.deepcopy(model).eval(), cfg

    teacher, _, _ = load_source(
        spec.teacher,
        task_head=task.model_head,
        num_labels=model.config.num_labels,
        trust_remote_code=recipe.trust_remote_code,
    )
    return teacher.eval(), cfg


def fmt_metrics(metrics: dict, key: str) -> str:
    parts = [f"{split} {key} {m[key]:.4f}" for split, m in metrics.items() if isinstance(m, dict) and key in m]
    return ", ".join(parts)


def bench_against(
    model: nn.Module, reference: nn.Module, recipe: Recipe, patterns: dict[str, str] | None = None
) -> dict:
    """The run's own measurement; unstructured matrices run in the sparse kernel where it is timed faster (as
    `prunekit bench` loads them), and are plain linears again afterwards."""
    b = recipe.bench
    packed = pack_unstructured(model, patterns) if str(next(model.parameters()).device) == "cpu" else None
    try:
        result = bench(
            model,
            reference,
            grid=tuple((x, b.seq) for x in b.batch),
            warmup=b.warmup,
            repeats=b.repeats,
            threads=b.threads,
            memory=False,
            patterns=patterns,
        )
    finally:
        if packed and packed["packed"]:
            unpack_sparse(model)
    return result
