"""`prunekit search`: the two stages end to end, and `prunekit extract`: a Pareto point as a run directory.

    data -> (dense fine-tune) -> importance reordering -> stage 1: super-network training (method `nas`)
         -> stage 2: multi-objective search on the validation split -> baselines on the dense model
         -> SEARCH_DIR: pareto.json, evaluations.jsonl, pareto.png, supernet/ (+ order.json), dense/

The search directory is built in a hidden `.NAME.partial` sibling and renamed when complete. `supernet/` is
the trained super-network saved in the original unit order (a plain run directory); `order.json` holds the
importance permutation, so `extract` maps a configuration back to the original heads and neurons and compacts
exactly the sub-network the search evaluated. Data protocol (METHODS.md 4d): the search sees the validation
split only (carved out of the training data by the recipe's seeded split, never resampled); the test split is
evaluated for the reported points only.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.bench import count_parameters, flops_per_token, measure_latency
from prunekit.compact.remove import compact
from prunekit.compact.structure import structure
from prunekit.core.errors import UsageError
from prunekit.core.files import fault_point
from prunekit.masks import sparsity_report
from prunekit.methods.nas import baselines as bl
from prunekit.methods.nas.config import SearchSpec
from prunekit.methods.nas.cost import compacted_copy, subnet_block_parameters, subnet_flops, subnet_parameters
from prunekit.methods.nas.pareto import hypervolume
from prunekit.methods.nas.reorder import UnitOrder, importance, order_from_scores, permute, to_original, unpermute
from prunekit.methods.nas.search import Evaluation, FrontProgress, Problem, front, multi_objective_search
from prunekit.methods.nas.space import make_space
from prunekit.pipelines.stages import (
    bench_against,
    check_lengths,
    evaluate_split,
    load_splits,
    load_start,
    load_teacher,
    split_info,
    task_info,
)
from prunekit.recipe import Recipe
from prunekit.report.markdown import table
from prunekit.report.plots import new_figure, save_figure
from prunekit.runs.directory import (
    check_target,
    check_writable,
    publish,
    recipe_inputs,
    resumable,
)
from prunekit.runs.io import load, read_manifest, save, write_model
from prunekit.runs.source import source_fingerprint, sparsity_summary
from prunekit.tasks import get_task
from prunekit.tasks.base import calibration_batches
from prunekit.topology import describe
from prunekit.train.checkpoint import has_checkpoint
from prunekit.train.loop import train

ORDER = "order.json"
PARETO = "pareto.json"

# ------------------------------------------------------------------ shared helpers


def _check(recipe: Recipe) -> SearchSpec:
    if recipe.method.get("name") != "nas":
        raise UsageError(
            f"prunekit search needs method.name 'nas', the recipe has '{recipe.method.get('name')}': "
            "set method: {name: nas, space: small} (see examples/nas-minilm-rt.yaml)"
        )
    return recipe.search or SearchSpec()


def _load_splits(recipe: Recipe):
    data, kind = load_splits(recipe.data)
    for split in ("validation", "test"):
        if split not in data or not len(data[split]):
            raise UsageError(f"the search needs a non-empty {split} split: set data.{split}_fraction above 0")
    return data, get_task(kind)


def _device(recipe: Recipe) -> torch.device:
    dev = recipe.train.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(dev)


def _batches(task, split, tok, recipe: Recipe, n: int):
    """A function giving the first `n` training examples as batches (for importance scores)."""
    return calibration_batches(task, split, tok, recipe.train.max_length, recipe.train.batch_size, n)


class Costs:
    """The efficiency objective of a sub-network: parameters, FLOPs per token, or measured latency (ms)."""

    def __init__(self, objective: str, recipe: Recipe, spec: SearchSpec, device: torch.device) -> None:
        self.objective, self.recipe, self.spec, self.device = objective, recipe, spec, device

    def of_masks(self, model: nn.Module, masks, detached) -> float:
        if self.objective == "params":
            return float(subnet_parameters(model, masks))
        if self.objective == "flops":
            return subnet_flops(model, masks, self.recipe.bench.seq)
        with detached():
            small = compacted_copy(model, masks)
        return self.of_model(small)

    def of_model(self, model: nn.Module) -> float:
        if self.objective == "params":
            return float(count_parameters(model)["total"])
        if self.objective == "flops":
            return float(flops_per_token(model, self.recipe.bench.seq)["total"])
        b = self.recipe.bench
        return measure_latency(
            model.to(self.device),
            batch=self.spec.latency_batch,
            seq_len=b.seq,
            vocab_size=model.config.vocab_size,
            warmup=b.warmup,
            repeats=b.repeats,
            threads=b.threads,
            device=self.device,
        )["median_ms"]


PERCENT_TASKS = ("extractive-qa", "summarization")  # SQuAD F1 / EM and ROUGE are reported in percent


def _error(metric: float, dense: float, greater_is_better: bool, scale: float = 1.0) -> float:
    """The quality objective, minimised: 1 - metric (metric as a fraction), or 1 - dense / metric for
    lower-is-better metrics (perplexity), which is 0 at the dense model's quality and below 1 always."""
    if greater_is_better:
        return 1.0 - metric / scale
    return 1.0 - dense / metric if metric else 1.0


# ------------------------------------------------------------------ prunekit search


def run_search(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    log=print,
    inputs: tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """Both stages into `out_dir`; returns the summary also written to pareto.json. `inputs`: more paths the search
    reads (the recipe file) that OUT may not hold."""
    spec = _check(recipe)
    reads = [*recipe_inputs(recipe), *inputs]
    claimed = resumable(out_dir, recipe.model_dump(mode="json"), overwrite=overwrite, resume=resume, inputs=reads,
                        has_progress=_has_progress, what="search")  # fmt: skip
    with claimed as (out, work):
        summary = _search(recipe, spec, work, progress, log, resume)
        publish(work, out)  # the trainer's checkpoints go; the super-network itself is in supernet/
    return summary | {"out_dir": str(out)}


def _has_progress(work: Path) -> bool:
    """Whether an interrupted search holds work worth resuming: a trainer checkpoint or the trained super-network."""
    return (work / "supernet" / ORDER).exists() or has_checkpoint(work)


def _stage1(recipe: Recipe, spec: SearchSpec, work: Path, data, task, progress: bool, log, resume: bool = False):
    """(dense model, trained super-network in importance order with the method attached, order, tokenizer).
    `resume`: a super-network the interrupted search finished is reused; else both trainings continue from their
    newest checkpoints (each resumes to the weights an uninterrupted run has, so the reordering between them is
    recomputed identically)."""
    method = recipe.create_method()
    if spec.supernet is not None:
        return _reuse(_supernet_home(Path(spec.supernet)), recipe, method)
    if resume and (work / "supernet" / ORDER).exists() and (work / "dense" / "prunekit.json").exists():
        log(f"super-network: reusing the one the interrupted search trained ({work / 'supernet'})")
        return _reuse(work, recipe, method)
    model, tok, manifest = load_start(recipe, task, task.num_labels(data))
    check_lengths(recipe, model)
    timings: dict[str, float] = {}
    if recipe.finetune is not None and recipe.finetune.epochs > 0:
        res = train(model, tok, task, data, config=recipe.finetune, work_dir=work, progress=progress, stage="finetune",
                    resume=resume)  # fmt: skip
        model, timings["finetune_s"] = res.model, res.train_s
    dense = copy.deepcopy(model).eval()
    topo = describe(model)
    order = UnitOrder.identity(topo.num_layers)
    t0 = time.perf_counter()
    if method.config.reorder:
        hs, ns = importance(
            model, topo, _batches(task, data["train"], tok, recipe, method.config.importance_examples)()
        )
        order = order_from_scores(topo, hs, ns)
        permute(model, topo, order)
    timings["reorder_s"] = round(time.perf_counter() - t0, 2)
    teacher, distill = load_teacher(recipe, dense, task)
    cfg = recipe.train
    if "select_best" not in cfg.model_fields_set:  # the full network's best epoch is not the super-network's
        cfg = cfg.model_copy(update={"select_best": False})
    res = train(
        model.train(),
        tok,
        task,
        data,
        method=method,
        config=cfg,
        work_dir=work,
        teacher=teacher,
        distill=distill,
        progress=progress,
        stage="supernet",
        resume=resume,
    )
    timings["supernet_s"] = res.train_s
    supernet = res.model
    with method.detached():
        plain = copy.deepcopy(supernet).cpu().eval()
    unpermute(plain, describe(plain), order)
    fields = dict(
        source_model=manifest.source_model if manifest else recipe.model,
        source_fingerprint=manifest.source_fingerprint if manifest else source_fingerprint(recipe.model),
        recipe=recipe.model_dump(mode="json"),
        task=task_info(task, recipe.data, data),
        split=split_info(recipe.data, data),
        timings=timings,
    )
    for name, m, meth in (("supernet", plain, "nas"), ("dense", dense, "dense")):
        (work / name).mkdir(exist_ok=True)  # a kill while writing them leaves them half-written: written again
        write_model(m, work / name, tok, method=meth, history=res.history if name == "supernet" else [], **fields)
    (work / "supernet" / ORDER).write_text(json.dumps(order.to_json()))
    log(f"super-network trained ({res.steps} steps, strategy {method.config.strategy}, space {method.config.space})")
    return dense, supernet, method, order, tok


def _supernet_home(src: Path) -> Path:
    """The directory holding a search's supernet/ (a search that reused one points to where it lives)."""
    if not (src / "supernet").exists() and (src / PARETO).exists():
        return Path(json.loads((src / PARETO).read_text()).get("supernet_dir") or src)
    return src


def _reuse(src: Path, recipe: Recipe, method):
    """A previous search directory's super-network (stage 1 skipped; several searches can share it)."""
    if not (src / "supernet" / ORDER).exists():
        raise UsageError(f"search.supernet '{src}' has no supernet/{ORDER}: give a directory `prunekit search` wrote")
    supernet, tok = load(src / "supernet", with_tokenizer=True)
    dense = load(src / "dense") if (src / "dense").exists() else copy.deepcopy(supernet)
    order = UnitOrder.from_json(json.loads((src / "supernet" / ORDER).read_text()))
    topo = describe(supernet)
    permute(supernet, topo, order)
    method.attach(supernet, topo)
    return dense, supernet, method, order, tok


def _search(recipe: Recipe, spec: SearchSpec, work: Path, progress: bool, log, resume: bool = False) -> dict[str, Any]:
    data, task = _load_splits(recipe)
    dense, supernet, method, order, tok = _stage1(recipe, spec, work, data, task, progress, log, resume)
    device = _device(recipe)
    supernet.to(device).eval()
    dense.to(device).eval()
    space, key = method.space, task.main_metric
    costs = Costs(spec.objective, recipe, spec, device)
    val, test = data["validation"], data["test"]
    dense_val = evaluate_split(task, dense, val, tok, recipe.train, device, spec.max_eval_examples)
    dense_cost = costs.of_model(dense)
    dense_blocks = count_parameters(dense)["blocks"]
    scale = 100.0 if task.kind in PERCENT_TASKS else 1.0
    err = lambda m: _error(m[key], dense_val[key], task.greater_is_better, scale)  # noqa: E731

    def evaluate(config) -> Evaluation:
        fault_point("search")  # a test hook: inert unless PRUNEKIT_FAULT_AT is set
        masks = space.masks(config)
        with method.use(masks):
            metrics = evaluate_split(task, supernet, val, tok, recipe.train, device, spec.max_eval_examples)
        cost = costs.of_masks(supernet, masks, method.detached)
        blocks = subnet_block_parameters(supernet, masks) / dense_blocks
        info = {"validation": metrics, "cost": cost, "block_params": blocks, "structure": space.summary(config)}
        return Evaluation(config, (err(metrics), cost / dense_cost), info)

    reference = tuple(spec.reference_point)
    t0 = time.perf_counter()
    with FrontProgress(spec.budget, reference, enabled=progress) as bar:
        problem = Problem(evaluate, on_new=bar.add)
        evals = multi_objective_search(
            spec.searcher,
            space,
            problem,
            budget=spec.budget,
            seed=spec.seed,
            initial=space.initial(spec.initial_design),
            population=spec.population,
            sample_size=spec.sample_size,
            storage=spec.storage,
            study_name=spec.study_name,
        )
    search_s = round(time.perf_counter() - t0, 2)
    best = front(evals)
    points = []
    for k, ev in enumerate(best):
        with method.use(space.masks(ev.config)):
            test_m = evaluate_split(task, supernet, test, tok, recipe.train, device)
        points.append(_point(k, ev, test_m))
    hv = hypervolume([e.objectives for e in best], reference)
    t0 = time.perf_counter()
    baselines = _baselines(recipe, spec, dense, data, task, tok, costs, dense_cost, err, device)
    baselines_s = round(time.perf_counter() - t0, 2)
    families = {b["name"]: [] for b in baselines}
    for b in baselines:
        families[b["name"]].append(tuple(b["objectives"]))
    baseline_hv = {name: hypervolume(pts, reference) for name, pts in families.items()}
    if baselines:
        baseline_hv["all"] = hypervolume([tuple(b["objectives"]) for b in baselines], reference)
    stage1 = {} if spec.supernet else read_manifest(work / "supernet").timings or {}  # a reused one ran elsewhere
    timings = stage1 | {"search_s": search_s, "baselines_s": baselines_s}
    summary = {
        "metric": key,
        "objective": spec.objective,
        "objectives": [
            (f"1 - validation {key}" + (" / 100" if scale != 1 else ""))
            if task.greater_is_better
            else f"1 - dense / validation {key}",
            f"{spec.objective} relative to the dense model",
        ],
        "metric_scale": scale,
        "reference_point": list(reference),
        "hypervolume": hv,
        "baseline_hypervolume": baseline_hv,
        "searcher": spec.searcher,
        "budget": spec.budget,
        "seed": spec.seed,
        "evaluations": len(evals),
        "search_s": search_s,
        "timings": timings,
        "space": {"name": space.name, "names": space.names, "lows": space.lows.tolist(), "highs": space.highs.tolist()},
        "dense": {
            "validation": dense_val,
            "test": evaluate_split(task, dense, test, tok, recipe.train, device),
            "cost": dense_cost,
            "block_param_count": dense_blocks,  # the points' block_params are fractions of it
        },
        "points": points,
        "baselines": baselines,
        "recipe": recipe.model_dump(mode="json"),
        "supernet_dir": str(_supernet_home(Path(spec.supernet)).resolve()) if spec.supernet else None,
    }
    (work / PARETO).write_text(json.dumps(summary, indent=1))
    with open(work / "evaluations.jsonl", "w") as fh:
        for ev in evals:
            fh.write(json.dumps({"config": list(ev.config), "objectives": list(ev.objectives), **ev.info}) + "\n")
    plot_pareto(summary, [e.objectives for e in evals], work / "pareto.png")
    (work / "report.md").write_text(search_report(summary, work.name.removeprefix(".").removesuffix(".partial")))
    method.remove()
    log(f"front of {len(points)} points from {len(evals)} evaluations, hypervolume {hv:.4f} (reference {reference})")
    return {"points": len(points), "evaluations": len(evals), "hypervolume": hv}


def _point(k: int, ev, test: dict) -> dict[str, Any]:
    return {
        "index": k,
        "config": list(ev.config),
        "objectives": list(ev.objectives),
        "cost": ev.info.get("cost"),
        "block_params": ev.info.get("block_params"),
        "structure": ev.info.get("structure"),
        "validation": ev.info.get("validation"),
        "test": test,
    }


def _baselines(recipe, spec, dense, data, task, tok, costs, dense_cost, err, device) -> list[dict]:
    topo = describe(dense)
    dense_blocks = count_parameters(dense, topo)["blocks"]
    sizes = spec.baseline_sizes
    out = []
    for name in spec.baselines:
        if name == "heads":
            batches = _batches(task, data["train"], tok, recipe, recipe.method.get("importance_examples", 256))
            sets = bl.michel_heads(dense, topo, batches, sizes)
        elif name == "layers":
            sets = bl.drop_layers(topo, sizes)
        else:
            sets = bl.magnitude(dense, topo, sizes)
        for size, masks in sets.items():
            small = compacted_copy(dense, masks).to(device)
            val = evaluate_split(task, small, data["validation"], tok, recipe.train, device, spec.max_eval_examples)
            cost = costs.of_model(small)
            layers = structure(small)
            out.append(
                {
                    "name": name,
                    "size": size,
                    "objectives": [err(val), cost / dense_cost],
                    "cost": cost,
                    "block_params": count_parameters(small)["blocks"] / dense_blocks,
                    "validation": val,
                    "test": evaluate_split(task, small, data["test"], tok, recipe.train, device),
                    "structure": {"heads": [e["heads"] for e in layers], "neurons": [e["ffn_width"] for e in layers]},
                }
            )
    return out


def search_report(summary: dict, name: str) -> str:
    """The front and the baselines as Markdown tables, with the hypervolume and its reference point."""
    key, obj = summary["metric"], summary["objective"]
    fmt = lambda m: f"{m[key]:.4f}"  # noqa: E731
    layers = lambda s: " ".join(map(str, s["heads"])) + " / " + " ".join(map(str, s["neurons"]))  # noqa: E731
    lines = [
        f"# prunekit search: {name}",
        "",
        f"{summary['evaluations']} sub-networks evaluated by `{summary['searcher']}` (budget {summary['budget']}, "
        f"seed {summary['seed']}) on the validation split; objectives {summary['objectives'][0]} and "
        f"{summary['objectives'][1]}. Hypervolume of the front: **{summary['hypervolume']:.4f}**, reference "
        f"point {summary['reference_point']} in those normalised objectives.",
    ]
    bhv = summary.get("baseline_hypervolume") or {}
    if bhv:
        lines += ["", "Hypervolume of the baselines' points, same reference: "
                  + ", ".join(f"{LABELS.get(k, 'all baselines')} {v:.4f}" for k, v in bhv.items()) + "."]  # fmt: skip
    t = summary.get("timings") or {}
    if t:
        lines += ["", "Wall time: " + ", ".join(f"{k.removesuffix('_s')} {v / 60:.1f} min" for k, v in t.items()) + "."]
    lines += ["", "![Pareto front](pareto.png)", "", "## Pareto front", ""]
    blocks = lambda x: f"{x['block_params']:.3f}" if x.get("block_params") is not None else ""  # noqa: E731
    header = ["point", f"{obj} (rel.)", "block params (rel.)", f"validation {key}", f"test {key}",
              "heads / neurons per layer"]  # fmt: skip
    rows = [["dense", "1.000", "1.000", fmt(summary["dense"]["validation"]), fmt(summary["dense"]["test"]), ""]]
    rows += [[p["index"], f"{p['objectives'][1]:.3f}", blocks(p), fmt(p["validation"]), fmt(p["test"]),
              layers(p["structure"])] for p in summary["points"]]  # fmt: skip
    lines += table(header, rows, right={1, 2, 3, 4})
    if summary["baselines"]:
        lines += ["", "## Baselines (on the dense fine-tuned model)", ""]
        rows = [
            [f"{LABELS[b['name']]}, {b['size']:.0%} removed", f"{b['objectives'][1]:.3f}", blocks(b),
             fmt(b["validation"]), fmt(b["test"]), layers(b["structure"])]
            for b in summary["baselines"]
        ]  # fmt: skip
        lines += table(["baseline", *header[1:]], rows, right={1, 2, 3, 4})
    lines += ["", "`prunekit extract SEARCH_DIR POINT OUT` makes a run directory of a point.", ""]
    return "\n".join(lines)


LABELS = {"heads": "head pruning (Michel et al.)", "layers": "layer dropping", "magnitude": "magnitude heads+neurons"}


def plot_pareto(summary: dict, evaluated: list, path: Path) -> Path:
    """Validation metric against relative cost: every evaluation, the Pareto front, baselines, the dense model."""
    key = summary["metric"]
    fig, (ax,) = new_figure(1, width=7.0, panel_height=4.5)
    scale = summary.get("metric_scale", 1.0)
    to_metric = lambda e: (1 - e) * scale  # noqa: E731  (the error axis back to the metric's own scale)
    ax.scatter(
        [c for _, c in evaluated],
        [to_metric(e) for e, _ in evaluated],
        s=12,
        color="#bbbbbb",
        label="evaluated sub-networks",
        zorder=2,
    )
    pts = sorted(summary["points"], key=lambda p: p["objectives"][1])
    ax.step(
        [p["objectives"][1] for p in pts],
        [to_metric(p["objectives"][0]) for p in pts],
        where="post",
        color="#3b75af",
        marker="o",
        label=f"Pareto front (HV {summary['hypervolume']:.3f})",
        zorder=3,
    )
    for name, marker in (("heads", "s"), ("layers", "^"), ("magnitude", "D")):
        b = sorted((x for x in summary["baselines"] if x["name"] == name), key=lambda x: x["objectives"][1])
        if b:
            ax.plot(
                [x["objectives"][1] for x in b],
                [to_metric(x["objectives"][0]) for x in b],
                marker=marker,
                linestyle="--",
                label=LABELS[name],
                zorder=3,
            )
    greater = summary["objectives"][0].startswith("1 - validation")
    dense_y = summary["dense"]["validation"][key] if greater else 1.0
    ax.scatter([1.0], [dense_y], marker="*", s=140, color="#c44e52", label="dense", zorder=4)
    ax.set_xlabel(f"{summary['objective']} relative to the dense model")
    ax.set_ylabel(f"validation {key}" if greater else f"dense {key} / validation {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


# ------------------------------------------------------------------ prunekit extract


def extract(
    search_dir: str | Path,
    index: int,
    out_dir: str | Path,
    *,
    finetune_epochs: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Compact Pareto point `index` of a search into a run directory (optionally fine-tuned further)."""
    src = Path(search_dir)
    if not (src / PARETO).exists() or not (_supernet_home(src) / "supernet" / ORDER).exists():
        raise UsageError(
            f"'{src}' is not a search directory (no {PARETO} / supernet): give what `prunekit search` wrote"
        )
    check_writable(Path(out_dir))
    check_target(Path(out_dir), overwrite=overwrite, inputs=[src])
    summary = json.loads((src / PARETO).read_text())
    points = summary["points"]
    if not 0 <= index < len(points):
        raise UsageError(f"point {index} is not on the front: '{src}' has points 0..{len(points) - 1} (see {PARETO})")
    point = points[index]
    home = _supernet_home(src) / "supernet"
    model, tok = load(home, with_tokenizer=True)
    manifest = read_manifest(home)
    dense_params = sparsity_report(model)["params"]
    space = make_space(summary["space"]["name"], describe(model))
    order = UnitOrder.from_json(json.loads((home / ORDER).read_text()))
    masks = to_original(space.masks(tuple(point["config"])), order)
    compact(model, masks)
    recipe = Recipe.model_validate(manifest.recipe)
    data, task = _load_splits(recipe)
    history: list[dict] = []
    timings = _search_cost(summary.get("timings") or {})
    if finetune_epochs > 0:
        cfg = recipe.train.model_copy(update={"epochs": finetune_epochs})
        with tempfile.TemporaryDirectory() as tmp:
            res = train(model.train(), tok, task, data, config=cfg, work_dir=tmp, progress=progress, stage="extract")
        model, history = res.model, res.history
        timings["extract_s"] = res.train_s
    timings["train_s"] = round(sum(timings.values()), 2)
    device = _device(recipe)
    model.to(device).eval()
    metrics = {s: evaluate_split(task, model, data[s], tok, recipe.train, device) for s in ("validation", "test")}
    metrics["dense"] = {s: summary["dense"][s] for s in ("validation", "test")}  # what the search measured
    bench = None
    if recipe.bench.enabled:  # like `prunekit prune`, so `prunekit compare` puts extracted points beside other runs
        dense_dir = _supernet_home(src) / "dense"  # else the full super-network: dense-shaped, for latency
        bench = bench_against(model.cpu().eval(), load(dense_dir if dense_dir.exists() else home).eval(), recipe)
    saved = sparsity_report(model)
    saved |= {"params": dense_params, "sparsity": 1 - saved["kept"] / dense_params if dense_params else 0}
    save(
        model.cpu(),
        out_dir,
        tok,
        overwrite=overwrite,
        inputs=[src],
        source_model=manifest.source_model,
        source_fingerprint=manifest.source_fingerprint,
        method="nas",
        recipe=manifest.recipe,
        extract={"search_dir": str(src), "point": index, "config": point["config"], "finetune_epochs": finetune_epochs},
        task=manifest.task,
        split=manifest.split,
        metrics=metrics,
        history=history,
        sparsity={"saved": sparsity_summary(saved)},
        bench=bench,
        timings=timings,
    )
    return {"out_dir": str(out_dir), "point": index, "structure": point["structure"], "metrics": metrics}


def _search_cost(timings: dict[str, float]) -> dict[str, float]:
    """What producing a point cost beyond the dense fine-tune every method starts from: reordering, super-network
    training and the search (its baselines are comparisons, not part of the method)."""
    return {k: timings[k] for k in ("reorder_s", "supernet_s", "search_s") if isinstance(timings.get(k), int | float)}
