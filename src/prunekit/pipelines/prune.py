"""A recipe, end to end: data -> (dense fine-tune) -> prune while training -> compact -> evaluate -> bench
-> save -> report.

The run is built in a hidden sibling `.NAME.partial` (checkpoints included) and renamed to NAME only
when everything is written: an existing NAME is always a finished run, and `--resume` continues a
killed one from its newest checkpoint.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.recipe import DataSpec, Recipe
from prunekit.runs.directory import claim, partial_dir, prepare_partial, recipe_inputs, remove_run, remove_temp_files


def _has_progress(work: Path) -> bool:
    """Whether an interrupted run holds work worth resuming: a complete checkpoint or the dense stage."""
    from prunekit.runs.io import MANIFEST
    from prunekit.train.checkpoint import has_checkpoint

    return (work / "dense" / MANIFEST).exists() or has_checkpoint(work)


@contextmanager
def _cleanup_on_failure(work: Path, fresh: bool):
    """A run that fails leaves nothing behind, unless it has progress to resume: then it is kept and the error
    says so. A kill or Ctrl-C (not an Exception) always keeps it, for --resume."""
    try:
        yield
    except Exception as exc:
        if fresh and not _has_progress(work):
            shutil.rmtree(work, ignore_errors=True)
        elif work.exists():
            exc.add_note(f"the interrupted run is kept in {work}: fix the cause, then pass --resume")
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM (errors.Interrupted)
        if work.exists():
            exc.add_note(f"the partial run is kept in {work}: run the same command with --resume to continue it")
        raise


def _prune_before_training(method, model: nn.Module, task, data, tok, recipe: Recipe, timings: dict, log):
    """A one-shot method scores the dense model on calibration batches and its masks are compacted now, so the
    training stage that follows (recovery, with the dense teacher) runs on the small model. Returns (masks, their
    sparsity report on the dense model) or None. Deterministic for a recipe, so a resumed run compacts the same."""
    n = method.calibration_examples()
    if n <= 0:
        return None
    from prunekit.api import check_keeps_attention
    from prunekit.compact.remove import compact
    from prunekit.masks import sparsity_report
    from prunekit.tasks.base import calibration_batches

    t0 = time.perf_counter()
    cfg = recipe.train
    method.calibrate(model, calibration_batches(task, data["train"], tok, cfg.max_length, cfg.batch_size, n)())
    masks = method.prune_before_training()
    if masks is None:
        return None
    check_keeps_attention(model, masks)
    report = sparsity_report(model, masks)
    with torch.no_grad():
        compact(model, masks)
    timings["calibrate_s"] = round(time.perf_counter() - t0, 2)
    log(f"{method.name}: pruned {report['sparsity']:.1%} of the block weights before training (calibrated on {n})")
    return masks, report


def check_lengths(recipe: Recipe, model: nn.Module) -> None:
    """The recipe's sequence lengths fit the model's position embeddings (before any training)."""
    from prunekit.tasks.checks import check_max_length

    check_max_length(model.config, recipe.train.max_length)
    if recipe.finetune is not None:
        check_max_length(model.config, recipe.finetune.max_length, key="finetune.max_length")


def _load_start(recipe: Recipe, task, num_labels: int | None):
    """(model, tokenizer, manifest or None) for the recipe's model, with the task's head."""
    from prunekit.api import load_source

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
    inputs: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Run a recipe into `out_dir`; returns the summary also written to the manifest. `inputs`: more paths the run
    reads (the recipe file) that OUT may not hold."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    main = _is_main(recipe.train.device)
    method = recipe.create_method()
    if not main:
        return _stages(recipe, method, out, partial_dir(out), main, resume, progress, log, t0)
    with claim(out, overwrite=overwrite, inputs=[*recipe_inputs(recipe), *inputs]):
        work = prepare_partial(out, recipe.model_dump(mode="json"), overwrite=overwrite, resume=resume)
        with _cleanup_on_failure(work, fresh=not resume):
            return _stages(recipe, method, out, work, main, resume, progress, log, t0)


def _stages(recipe: Recipe, method, out: Path, work: Path, main: bool, resume: bool, progress: bool, log, t0: float):
    from prunekit.api import check_keeps_attention
    from prunekit.compact.remove import compact
    from prunekit.masks import sparsity_report
    from prunekit.runs.io import write_model
    from prunekit.tasks import get_task
    from prunekit.train.loop import train

    if resume and (written := _written(work)) is not None:
        return _finish(work, out, written)
    d = recipe.data
    data, kind = load_splits(d)
    task = get_task(kind)
    model, tok, manifest = _load_start(recipe, task, task.num_labels(data))
    method.check_model(model)
    check_lengths(recipe, model)
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}

    dense_dir = work / "dense"
    if recipe.finetune is not None and recipe.finetune.epochs > 0:
        if resume and (dense_dir / "prunekit.json").exists():
            from prunekit.runs.io import load, read_manifest

            model = load(dense_dir, block_sparse="never").train()
            done = read_manifest(dense_dir).timings.get("finetune_s")
            if done is not None:  # the resumed run reports the whole run's time, not only what followed the kill
                timings["finetune_s"] = done
            log(f"dense fine-tune: reusing {dense_dir}")
        else:
            res = train(model, tok, task, data, config=recipe.finetune, work_dir=work, resume=resume,
                        progress=progress, stage="finetune")  # fmt: skip
            model = res.model
            timings["finetune_s"] = res.train_s
            if main:
                dense_dir.mkdir(exist_ok=True)
                write_model(
                    model,
                    dense_dir,
                    tok,
                    source_model=recipe.model,
                    source_fingerprint=source_fingerprint(recipe.model),
                    method="dense",
                    task=_task_info(task, d, data),
                    timings={"finetune_s": res.train_s},
                )
    dense_reference = copy.deepcopy(model).eval() if main else None
    if main:
        metrics["dense"] = _evaluate(task, dense_reference, data, tok, recipe.train)
        # the reference every later number is set against; for a `dense` run that is the model before training
        before = "before training" if method.name == "dense" else "dense reference"
        log(f"{before}: {_fmt(metrics['dense'], task.main_metric)}")

    from prunekit.compact.structure import structure

    dense_structure = structure(model)
    dense_params = sparsity_report(model)["params"]
    teacher, distill = _teacher(recipe, model, task)
    early = _prune_before_training(method, model, task, data, tok, recipe, timings, log)
    res = train(model, tok, task, data, method=method, config=recipe.train, work_dir=work, teacher=teacher,
                distill=distill, resume=resume, progress=progress, stage="prune")  # fmt: skip
    timings["prune_s"] = res.train_s
    history = list(res.history)
    while (nxt := method.next_stage(res.model)) is not None:  # multi-stage methods
        teacher = nxt.teacher if distill else None
        res = train(res.model, tok, task, data, method=method, config=recipe.train, work_dir=work, resume=resume,
                    teacher=teacher, distill=distill, progress=progress, stage=nxt.stage)  # fmt: skip
        timings[f"{nxt.stage}_s"], history = res.train_s, history + res.history
    if not main:
        return {}
    model = res.model
    masks = method.finalize(model)
    mask_report = sparsity_report(model, masks)  # after finalize: includes a method's final cut
    method.save_plots(work / "plots")
    if early is not None and masks is None:  # a one-shot method: its masks were compacted before training
        masks, mask_report = early
    else:
        check_keeps_attention(model, masks)
        with torch.no_grad():
            if masks is not None:
                compact(model, masks)
    model.eval()
    metrics.update(_evaluate(task, model, data, tok, recipe.train))
    log(f"{method.name}: {_fmt(metrics, task.main_metric)}")
    saved_report = sparsity_report(model)
    # the saved model's non-zero block weights against the dense model's, so physical removal counts as sparsity
    saved_report |= {"params": dense_params, "sparsity": 1 - saved_report["kept"] / dense_params if dense_params else 0}
    summary: dict[str, Any] = {
        "sparsity": {"mask": _sparsity_summary(mask_report), "saved": _sparsity_summary(saved_report)},
        "metrics": metrics,
    }
    if recipe.bench.enabled:
        summary["bench"] = _bench(model, dense_reference, recipe, masks.patterns if masks is not None else None)
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    write_model(
        model,
        work,
        tok,
        storage=recipe.storage,
        source_model=manifest.source_model if manifest else recipe.model,
        source_fingerprint=manifest.source_fingerprint if manifest else source_fingerprint(recipe.model),
        method=method.name,
        recipe=recipe.model_dump(mode="json"),
        task=_task_info(task, d, data),
        split=split_info(d, data),
        metrics=metrics,
        timings=timings,
        patterns=dict(masks.patterns) if masks is not None else {},
        sparsity=summary["sparsity"],
        bench=summary.get("bench"),
        history=history,
        dense_structure=dense_structure,
        method_report=method.report(),
    )
    return _finish(work, out, summary | {"timings": timings})


def _finish(work: Path, out: Path, summary: dict) -> dict[str, Any]:
    """Report, drop the checkpoints (kept until the model is written, so a kill while writing it resumes),
    rename into place."""
    _write_report(work, out.name)
    for sub in ("checkpoints", "best"):
        shutil.rmtree(work / sub, ignore_errors=True)
    remove_temp_files(work)
    remove_run(out)
    work.replace(out)
    return summary | {"out_dir": str(out)}


def _written(work: Path) -> dict[str, Any] | None:
    """The summary of an interrupted run that was killed after its model was written (only the report and
    the rename were left), else None."""
    from prunekit.runs.io import MANIFEST, read_manifest

    if not (work / MANIFEST).exists() or (work / "checkpoints").exists():
        return None
    m = read_manifest(work)
    return {"sparsity": m.sparsity, "metrics": m.metrics, "bench": getattr(m, "bench", None), "timings": m.timings}


def load_splits(d: DataSpec):
    """(splits, task kind) of a recipe's data section: seeded splits, then the training cap.

    A `max_train_examples` above `max_examples` wins for the training split (8,000 pairs to train on with 2,000-pair
    evaluation splits); the evaluation splits are the ones `max_examples` alone gives, so `prunekit evaluate` re-makes
    the same test split from the recorded split recipe.
    """
    from prunekit.tasks import load_data

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
    return _cap_train(data, d.max_train_examples, d.seed), kind


def split_info(d: DataSpec, data) -> dict[str, Any]:
    """The split recipe a manifest records, so `prunekit evaluate` re-makes the same test split."""
    from prunekit.catalog.datasets import DATASETS, split_recipe
    from prunekit.runs.io import fingerprint

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
    from prunekit.tasks.data import dropped_rows

    sizes = {k: len(v) for k, v in data.items()}
    return split | {"max_train_examples": d.max_train_examples, "sizes": sizes, "dropped_rows": dropped_rows(data)}


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
    from prunekit.topology import describe
    from prunekit.train.distill import DistillConfig, resolve_hidden_norm

    spec = recipe.distill
    cfg = DistillConfig(**spec.model_dump(exclude={"teacher"}), teacher=spec.teacher)
    cfg = resolve_hidden_norm(cfg, describe(model).pre_norm)
    if spec.teacher == "dense":  # the dense fine-tuned stage, or the starting model when it is already fine-tuned
        return copy.deepcopy(model).eval(), cfg
    from prunekit.api import load_source

    teacher, _, _ = load_source(
        spec.teacher,
        task_head=task.model_head,
        num_labels=model.config.num_labels,
        trust_remote_code=recipe.trust_remote_code,
    )
    return teacher.eval(), cfg


def source_fingerprint(source: str) -> str | None:
    """The fingerprint of a source model given as a folder (None for catalog names and hub ids)."""
    from prunekit.catalog.models import MODELS
    from prunekit.runs.io import fingerprint

    return fingerprint(source) if source not in MODELS and Path(source).expanduser().is_dir() else None


def _sparsity_summary(report: dict) -> dict:
    from prunekit.api import _summary

    return _summary(report)


def _fmt(metrics: dict, key: str) -> str:
    parts = [f"{split} {key} {m[key]:.4f}" for split, m in metrics.items() if isinstance(m, dict) and key in m]
    return ", ".join(parts)


def _bench(model: nn.Module, reference: nn.Module, recipe: Recipe, patterns: dict[str, str] | None = None) -> dict:
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
        patterns=patterns,
    )


def _write_report(run_dir: Path, name: str) -> None:
    from prunekit.report import write_report

    write_report(run_dir, name=name)
