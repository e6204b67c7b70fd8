"""A recipe, end to end: data -> (dense fine-tune) -> prune while training -> compact -> evaluate -> bench
-> save -> report.

The run is built in a hidden sibling `.NAME.partial` (checkpoints included) and renamed to NAME only
when everything is written: an existing NAME is always a finished run, and `--resume` continues a
killed one from its newest checkpoint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from torch import nn

from prunekit.compact.remove import compact
from prunekit.compact.structure import structure
from prunekit.masks import MaskSet, check_keeps_attention, maskset_from_state, maskset_state, sparsity_report
from prunekit.methods.base import Method
from prunekit.pipelines.stages import (
    bench_against,
    check_lengths,
    evaluate_splits,
    fmt_metrics,
    is_main,
    load_splits,
    load_start,
    load_teacher,
    split_info,
    task_info,
)
from prunekit.recipe import Recipe
from prunekit.report import write_report
from prunekit.runs.directory import partial_dir, publish, recipe_inputs, resumable
from prunekit.runs.io import MANIFEST, load, read_manifest, write_model
from prunekit.runs.source import source_fingerprint, sparsity_summary
from prunekit.tasks import get_task
from prunekit.tasks.base import calibration_batches
from prunekit.train.checkpoint import has_checkpoint
from prunekit.train.loop import train


def _has_progress(work: Path) -> bool:
    """Whether an interrupted run holds work worth resuming: a complete checkpoint or the dense stage."""
    return (work / "dense" / MANIFEST).exists() or has_checkpoint(work)


ONE_SHOT_MASKS = "one_shot_masks.pt"  # in the work folder: what a resumed run compacts, not re-measured


def _prune_before_training(run: Run, model: nn.Module, task, data, tok):
    """A one-shot method scores the dense model on calibration batches and its masks are compacted now, so the
    training stage that follows (recovery, with the dense teacher) runs on the small model. Returns (masks, their
    sparsity report on the dense model) or None. The masks are kept in the work folder: a run resumed from a
    checkpoint compacts the same units even where they were chosen by measured latency, and under `accelerate
    launch` every process compacts the main process's masks."""
    method, cfg = run.method, run.recipe.train
    n = method.calibration_examples()
    if n <= 0:
        return None
    t0 = time.perf_counter()
    saved = run.work / ONE_SHOT_MASKS
    length = method.calibration_length() or cfg.max_length
    batches = calibration_batches(task, data["train"], tok, length, cfg.batch_size, n)
    if run.resume and saved.exists() and has_checkpoint(run.work):  # the checkpoint holds the weights after it
        masks = maskset_from_state(torch.load(saved, weights_only=True))
        run.log(f"{method.name}: compacting the units chosen before the interruption ({saved.name})")
        report = sparsity_report(model, masks)
        with torch.no_grad():
            compact(model, masks)
        return masks, report
    method.progress = run.progress
    method.calibrate(model, batches())
    masks = _same_on_every_process(method.prune_before_training())
    if masks is None:  # calibrated only (e.g. learned scores started from data importance)
        run.timings["calibrate_s"] = round(time.perf_counter() - t0, 2)
        return None
    check_keeps_attention(model, masks)
    report = sparsity_report(model, masks)
    with torch.no_grad():
        compact(model, masks)
    method.after_compact(model, batches)
    if run.main:
        tmp = saved.with_suffix(".tmp")
        torch.save(maskset_state(masks), tmp)
        tmp.replace(saved)
    run.timings["calibrate_s"] = round(time.perf_counter() - t0, 2)
    peak = (method.report() or {}).get("calibration_peak_mb")
    memory = f", peak memory {peak:,.0f} MB" if peak else ""
    run.log(f"{method.name}: pruned {report['sparsity']:.1%} of the block weights before training (calibrated on {n} "
            f"sequences of up to {length} tokens in {run.timings['calibrate_s']:.0f} s{memory})")  # fmt: skip
    return masks, report


def _same_on_every_process(masks: MaskSet | None) -> MaskSet | None:
    """The main process's masks on every process (a choice by measured latency may differ between processes)."""
    state = PartialState()
    if state.num_processes <= 1:
        return masks
    box = [maskset_state(masks) if masks is not None else None]
    broadcast_object_list(box, from_process=0)
    return maskset_from_state(box[0]) if box[0] is not None else None


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
    main = is_main(recipe.train.device)
    method = recipe.create_method()
    if not main:
        return _stages(Run(recipe, method, out, partial_dir(out), main, resume, progress, log, t0))
    claimed = resumable(out, recipe.model_dump(mode="json"), overwrite=overwrite, resume=resume,
                        inputs=[*recipe_inputs(recipe), *inputs], has_progress=_has_progress)  # fmt: skip
    with claimed as (out, work):
        return _stages(Run(recipe, method, out, work, main, resume, progress, log, t0))


@dataclass
class Run:
    """One `prunekit prune` in progress: what every stage reads, and the timings and metrics they add to."""

    recipe: Recipe
    method: Method
    out: Path
    work: Path
    main: bool  # the main process (the only one under `accelerate launch` that evaluates and writes)
    resume: bool
    progress: bool
    log: Callable[[str], None]
    t0: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _stages(run: Run) -> dict[str, Any]:
    """Load, fine-tune dense, prune while training (every stage of the method), compact, measure, save."""
    if run.resume and (written := _written(run.work)) is not None:
        return _finish(run.work, run.out, written)
    data, kind = load_splits(run.recipe.data)
    task = get_task(kind)
    model, tok, manifest = load_start(run.recipe, task, task.num_labels(data))
    run.method.check_model(model)
    check_lengths(run.recipe, model)
    model = _dense_stage(run, model, tok, task, data)
    dense_reference = copy.deepcopy(model).eval() if run.main else None
    if run.main:
        run.metrics["dense"] = evaluate_splits(task, dense_reference, data, tok, run.recipe.train)
        # the reference every later number is set against; for a `dense` run that is the model before training
        before = "before training" if run.method.name == "dense" else "dense reference"
        run.log(f"{before}: {fmt_metrics(run.metrics['dense'], task.main_metric)}")
    dense = {"structure": structure(model), "params": sparsity_report(model)["params"]}
    model, history, early, removed = _training_stages(run, model, tok, task, data)
    if not run.main:
        return {}
    model, masks, mask_report = _final_masks(run, model, early, removed, dense["params"])
    model.eval()
    run.metrics.update(evaluate_splits(task, model, data, tok, run.recipe.train))
    run.log(f"{run.method.name}: {fmt_metrics(run.metrics, task.main_metric)}")
    saved_report = sparsity_report(model)
    # the saved model's non-zero block weights against the dense model's, so physical removal counts as sparsity
    params = dense["params"]
    saved_report |= {"params": params, "sparsity": 1 - saved_report["kept"] / params if params else 0}
    summary: dict[str, Any] = {
        "sparsity": {"mask": sparsity_summary(mask_report), "saved": sparsity_summary(saved_report)},
        "metrics": run.metrics,
    }
    if run.recipe.bench.enabled:
        patterns = masks.patterns if masks is not None else None
        summary["bench"] = bench_against(model, dense_reference, run.recipe, patterns)
    run.timings["total_s"] = round(time.perf_counter() - run.t0, 2)
    write_model(
        model,
        run.work,
        tok,
        storage=run.recipe.storage,
        source_model=manifest.source_model if manifest else run.recipe.model,
        source_fingerprint=manifest.source_fingerprint if manifest else source_fingerprint(run.recipe.model),
        method=run.method.name,
        recipe=run.recipe.model_dump(mode="json"),
        task=task_info(task, run.recipe.data, data),
        split=split_info(run.recipe.data, data),
        metrics=run.metrics,
        timings=run.timings,
        patterns=dict(masks.patterns) if masks is not None else {},
        sparsity=summary["sparsity"],
        bench=summary.get("bench"),
        history=history,
        dense_structure=dense["structure"],
        method_report=run.method.report(),
    )
    return _finish(run.work, run.out, summary | {"timings": run.timings})


def _dense_stage(run: Run, model: nn.Module, tok, task, data) -> nn.Module:
    """The recipe's dense fine-tune (kept in work/dense, so a resumed run reuses it), or the model as it is."""
    recipe, dense_dir = run.recipe, run.work / "dense"
    if recipe.finetune is None or recipe.finetune.epochs <= 0:
        return model
    if run.resume and (dense_dir / MANIFEST).exists():
        done = read_manifest(dense_dir).timings.get("finetune_s")
        if done is not None:  # the resumed run reports the whole run's time, not only what followed the kill
            run.timings["finetune_s"] = done
        run.log(f"dense fine-tune: reusing {dense_dir}")
        return load(dense_dir, block_sparse="never").train()
    res = train(model, tok, task, data, config=recipe.finetune, work_dir=run.work, resume=run.resume,
                progress=run.progress, stage="finetune")  # fmt: skip
    run.timings["finetune_s"] = res.train_s
    if run.main:
        dense_dir.mkdir(exist_ok=True)
        write_model(
            res.model,
            dense_dir,
            tok,
            source_model=recipe.model,
            source_fingerprint=source_fingerprint(recipe.model),
            method="dense",
            task=task_info(task, recipe.data, data),
            timings={"finetune_s": res.train_s},
        )
    return res.model


def _training_stages(run: Run, model: nn.Module, tok, task, data):
    """A one-shot method's pruning before training, then the training stage and every further stage a multi-stage
    method declares. Returns (model, training history, the one-shot masks and their report or None, whether
    structure was removed during training)."""
    recipe, method = run.recipe, run.method
    teacher, distill = load_teacher(recipe, model, task)
    early = _prune_before_training(run, model, task, data, tok)
    res = train(model, tok, task, data, method=method, config=recipe.train, work_dir=run.work, teacher=teacher,
                distill=distill, resume=run.resume, progress=run.progress, stage="prune")  # fmt: skip
    run.timings["prune_s"] = res.train_s
    history, removed = list(res.history), list(res.removed)
    while (nxt := method.next_stage(res.model)) is not None:  # multi-stage methods
        teacher = nxt.teacher if distill else None
        res = train(res.model, tok, task, data, method=method, config=recipe.train, work_dir=run.work,
                    resume=run.resume, teacher=teacher, distill=distill, progress=run.progress,
                    stage=nxt.stage)  # fmt: skip
        run.timings[f"{nxt.stage}_s"], history = res.train_s, history + res.history
        removed += res.removed
    return res.model, history, early, bool(removed)


def _final_masks(run: Run, model: nn.Module, early, removed: bool, dense_params: int):
    """The method's final masks, compacted (a one-shot method's were compacted before training, a gradual method's
    structure maybe during it): (model, masks, their sparsity report against the dense model)."""
    masks = run.method.finalize(model)
    mask_report = sparsity_report(model, masks)  # after finalize: includes a method's final cut
    run.method.save_plots(run.work / "plots")
    if early is not None and masks is None and not removed:  # a one-shot method: compacted before training
        return model, *early
    if removed:  # what the masks keep of the smaller model, counted against the dense model's weights
        mask_report |= {"params": dense_params, "sparsity": 1 - mask_report["kept"] / dense_params}
    check_keeps_attention(model, masks)
    with torch.no_grad():
        if masks is not None:
            compact(model, masks)
    return model, masks, mask_report


def _finish(work: Path, out: Path, summary: dict) -> dict[str, Any]:
    """Report, drop the checkpoints (kept until the model is written, so a kill while writing it resumes),
    rename into place."""
    write_report(work, name=out.name)
    publish(work, out)
    return summary | {"out_dir": str(out)}


def _written(work: Path) -> dict[str, Any] | None:
    """The summary of an interrupted run that was killed after its model was written (only the report and
    the rename were left), else None."""
    if not (work / MANIFEST).exists() or (work / "checkpoints").exists():
        return None
    m = read_manifest(work)
    return {"sparsity": m.sparsity, "metrics": m.metrics, "bench": getattr(m, "bench", None), "timings": m.timings}
