"""A recipe, end to end: data -> (dense fine-tune) -> prune while training -> compact -> evaluate -> bench
-> save -> report.

The run is built in a hidden sibling `.NAME.partial` (checkpoints included) and renamed to NAME only
when everything is written: an existing NAME is always a finished run, and `--resume` continues a
killed one from its newest checkpoint.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import UsageError
from prunekit.recipe import Recipe


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _prepare_dirs(out: Path, recipe: Recipe, overwrite: bool, resume: bool) -> Path:
    work = partial_dir(out)
    if out.exists() and not overwrite:
        raise UsageError(f"output directory '{out}' exists: choose another path or pass --overwrite")
    if resume:
        if not work.exists():
            raise UsageError(
                f"nothing to resume at '{out}': no interrupted run ({work.name}); start it without --resume"
            )
        saved = json.loads((work / "recipe.json").read_text())
        if saved != recipe.model_dump(mode="json"):
            raise UsageError(f"the recipe differs from the interrupted run's ({work / 'recipe.json'}): resume with it")
        return work
    if work.exists():
        if not overwrite:
            raise UsageError(
                f"an interrupted run of '{out}' exists ({work}): pass --resume to continue it or --overwrite to restart"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "recipe.json").write_text(json.dumps(recipe.model_dump(mode="json"), indent=2))
    return work


def _load_start(recipe: Recipe, task, num_labels: int | None):
    """(model, tokenizer, manifest or None) for the recipe's model, with the task's head."""
    from prunekit.api import load_source

    model, tok, manifest = load_source(
        recipe.model,
        task_head=task.model_head,
        num_labels=num_labels,
        trust_remote_code=recipe.trust_remote_code,
    )
    if manifest is not None and manifest.task_head != task.model_head:
        raise UsageError(f"'{recipe.model}' has a {manifest.task_head} head, the task needs {task.model_head}")
    return model.train(), tok, manifest


def _evaluate(task, model: nn.Module, data, tokenizer, cfg) -> dict[str, dict]:
    out = {}
    for split in ("validation", "test"):
        if split in data and len(data[split]):
            out[split] = task.evaluate(
                model, data[split], tokenizer, batch_size=cfg.eval_batch_size, max_length=cfg.max_length
            )
    return out


def _is_main(device: str | None) -> bool:
    """Main process under `accelerate launch` (same device choice as the trainer, which shares this state)."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available()).is_main_process


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Run a recipe into `out_dir`; returns the summary also written to the manifest."""
    from prunekit.compact import compact
    from prunekit.io import write_model
    from prunekit.masks import sparsity_report
    from prunekit.tasks import get_task, load_data
    from prunekit.train.loop import train

    t0 = time.perf_counter()
    out = Path(out_dir)
    main = _is_main(recipe.train.device)
    method = recipe.create_method()
    d = recipe.data
    data, kind = load_data(
        d.dataset,
        task=d.task,
        columns=d.columns,
        data_dir=d.data_dir,
        seed=d.seed,
        validation_fraction=d.validation_fraction,
        test_fraction=d.test_fraction,
        max_examples=d.max_examples,
    )
    data = _cap_train(data, d.max_train_examples, d.seed)
    task = get_task(kind)
    work = _prepare_dirs(out, recipe, overwrite, resume) if main else partial_dir(out)
    model, tok, manifest = _load_start(recipe, task, task.num_labels(data))
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}

    dense_dir = work / "dense"
    if recipe.finetune is not None and recipe.finetune.epochs > 0:
        if resume and (dense_dir / "prunekit.json").exists():
            from prunekit.io import load

            model = load(dense_dir).train()
            log(f"dense fine-tune: reusing {dense_dir}")
        else:
            res = train(model, tok, task, data, config=recipe.finetune, work_dir=work, resume=resume,
                        progress=progress, stage="finetune")  # fmt: skip
            model = res.model
            timings["finetune_s"] = res.train_s
            if main:
                dense_dir.mkdir(exist_ok=True)
                write_model(
                    model, dense_dir, tok, source_model=recipe.model, method="dense", task=_task_info(task, d, data)
                )
    dense_reference = copy.deepcopy(model).eval() if main else None
    if main:
        metrics["dense"] = _evaluate(task, dense_reference, data, tok, recipe.train)
        log(f"dense: {_fmt(metrics['dense'], task.main_metric)}")

    from prunekit.structure import structure

    dense_structure = structure(model)
    teacher, distill = _teacher(recipe, model, task)
    res = train(model, tok, task, data, method=method, config=recipe.train, work_dir=work, teacher=teacher,
                distill=distill, resume=resume, progress=progress, stage="prune")  # fmt: skip
    timings["prune_s"] = res.train_s
    if not main:
        return {}
    model = res.model
    mask_report = sparsity_report(model, method.masks(), method.topo)
    masks = method.finalize(model)
    with torch.no_grad():
        if masks is not None:
            compact(model, masks)
    model.eval()
    metrics.update(_evaluate(task, model, data, tok, recipe.train))
    log(f"{method.name}: {_fmt(metrics, task.main_metric)}")
    saved_report = sparsity_report(model)
    summary: dict[str, Any] = {
        "sparsity": {"mask": _sparsity_summary(mask_report), "saved": _sparsity_summary(saved_report)},
        "metrics": metrics,
    }
    if recipe.bench.enabled:
        summary["bench"] = _bench(model, dense_reference, recipe)
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    from prunekit.catalog.datasets import DATASETS, split_recipe

    split = (
        split_recipe(
            d.dataset,
            d.seed,
            data_dir=d.data_dir,
            validation_fraction=d.validation_fraction,
            test_fraction=d.test_fraction,
            max_examples=d.max_examples,
        )  # fmt: skip
        if d.dataset in DATASETS
        else {"file": d.dataset, "seed": d.seed}
    )
    split |= {"max_train_examples": d.max_train_examples, "sizes": {k: len(v) for k, v in data.items()}}
    for sub in ("checkpoints", "best"):
        shutil.rmtree(work / sub, ignore_errors=True)
    write_model(
        model,
        work,
        tok,
        source_model=manifest.source_model if manifest else recipe.model,
        method=method.name,
        recipe=recipe.model_dump(mode="json"),
        task=_task_info(task, d, data),
        split=split,
        metrics=metrics,
        timings=timings,
        patterns=dict(masks.patterns) if masks is not None else {},
        sparsity=summary["sparsity"],
        bench=summary.get("bench"),
        history=res.history,
        dense_structure=dense_structure,
    )
    _write_report(work)
    if out.exists():
        shutil.rmtree(out)
    work.replace(out)
    return summary | {"out_dir": str(out), "timings": timings}


def _cap_train(data, cap: int | None, seed: int):
    """A seeded (stratified where labelled) subset of the training split; evaluation splits stay whole."""
    if cap is None or len(data["train"]) <= cap:
        return data
    from prunekit.catalog.datasets import _take

    train = data["train"]
    labels = train["label"] if "label" in train.column_names else None
    data["train"] = train.select(sorted(_take(list(range(len(train))), cap, labels, seed)[1]))
    return data


def _task_info(task, d, data) -> dict[str, Any]:
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


def _teacher(recipe: Recipe, model: nn.Module, task):
    if recipe.distill is None:
        return None, None
    from prunekit.train.distill import DistillConfig

    spec = recipe.distill
    cfg = DistillConfig(**spec.model_dump(exclude={"teacher"}), teacher=spec.teacher)
    if spec.teacher == "dense":  # the dense fine-tuned stage, or the starting model when it is already fine-tuned
        return copy.deepcopy(model).eval(), cfg
    from prunekit.api import load_source

    teacher, _, _ = load_source(spec.teacher, task_head=task.model_head, num_labels=model.config.num_labels)
    return teacher.eval(), cfg


def _sparsity_summary(report: dict) -> dict:
    from prunekit.api import _summary

    return _summary(report)


def _fmt(metrics: dict, key: str) -> str:
    parts = [f"{split} {key} {m[key]:.4f}" for split, m in metrics.items() if isinstance(m, dict) and key in m]
    return ", ".join(parts)


def _bench(model: nn.Module, reference: nn.Module, recipe: Recipe) -> dict:
    from prunekit.bench import bench

    b = recipe.bench
    return bench(
        model,
        reference,
        grid=tuple((x, b.seq) for x in b.batch),
        warmup=b.warmup,
        repeats=b.repeats,
        threads=b.threads,
        memory=False,
    )


def _write_report(run_dir: Path) -> None:
    try:
        from prunekit.report import write_report
    except ImportError:  # reports are optional to the run itself
        return
    write_report(run_dir)
