"""The peer in the same run: Torch-Pruning's magnitude and Taylor pruning beside prunekit's, same split, same start.

For every seed: one prunekit dense fine-tune (`prunekit prune`, method dense, as benchmarks/run.py makes it), then
from that model

- `prunekit-taylor`: prunekit's one-shot `structured` method (first-order Taylor scores of heads and FFN neurons on
  `--calib-batches` training batches, the lowest `--heads` / `--neurons` of every layer removed, compacted), then
  `--epochs` of fine-tuning at `--lr` (`prunekit prune`);
- `prunekit-taylor-kd`: the same with logit distillation from the dense run (alpha 0.5, temperature 2);
- `prunekit-etaylor[-kd]`: the same with `criterion: taylor-elementwise` (sum of |w * g| over the unit's weights,
  the per-weight form Torch-Pruning's Taylor importance uses: it removes exactly the heads and neurons `tp-taylor`
  removes);
- `prunekit-etaylor-hkd`: the same with distillation of the logits and of every block's hidden states (MSE, weight
  1 per block: the pruned model keeps the hidden size);
- `prunekit-etaylor-rN-hkd`: the same cut in N rounds (`rounds: N`): a share of the structure before training, the
  next after each 1/N of the recovery steps, re-scored on the same calibration batches with the model as trained;
- `prunekit-latency-kd`: Taylor scores, but the heads and neurons of any layer removed by least score per
  millisecond saved (`scope: latency`, costs measured on this machine at the largest bench batch) until the
  predicted `--speedup`, then the same recovery with distillation;
- `prunekit-etaylor-latency[-hkd]`: the same allocation by measured cost, scored by per-weight Taylor, with no
  distillation (the peer's recovery) or with logit and hidden-state distillation;
- `prunekit-magnitude-kd`: gradual magnitude pruning of the same structure with distillation, the README's older
  headline, now training small (the heads and neurons removed at the schedule's end, 70% of the epochs);
- `tp-magnitude` / `tp-taylor`: Torch-Pruning (the optional extra `peers`: `pip install -e .[peers]`) with
  `GroupMagnitudeImportance(p=2)` / `GroupTaylorImportance()` (gradients of the same `--calib-batches` training
  batches prunekit calibrates on, model in eval mode), asked to remove `--heads` of the attention heads (whole
  heads: `prune_num_heads=True, prune_head_dims=False`) and `--neurons` of the FFN neurons of every layer, the
  hidden size untouched; its compacted model is fine-tuned `--epochs` at `--lr` with prunekit's own training loop
  (the same TrainConfig, so the same batches, schedule and best-checkpoint selection), evaluated on the same test
  split, benchmarked beside the dense run with the same bench settings and saved as a prunekit run directory
  (source_model: the dense run, so `prunekit bench RUN` measures it against it).

Every run writes OUT/sSEED/NAME (a prunekit run directory; recipes of the CLI runs in OUT/recipes/). A finished run
is skipped, so re-running resumes; an interrupted prunekit run resumes from its checkpoint, an interrupted
Torch-Pruning run starts over. A variant that fails is reported and the others go on. Then one Markdown table,
printed and written to OUT/peers.md: per variant, each seed and the mean over the seeds, the test accuracy, its
change from the seed's dense run, the measured speedup at each bench batch (from the run's own benchmark beside
the dense model; `--rebench` re-measures every run with `prunekit bench` at the end, one after another), the
block parameters kept and the pruning-stage wall time (prunekit: calibration + recovery, `timings.calibrate_s +
prune_s`; Torch-Pruning: dependency graph + gradients + pruning + recovery). Every run benchmarks itself, so run
nothing else meanwhile.

The issue's table (MiniLM-L6 on Rotten Tomatoes, all of the training split, dense 3 epochs at 5e-5, 50% of the
heads and FFN neurons, 2 epochs at 5e-5, max_length 64 as in benchmarks/suites/_common.yaml, bench batch 1 and 32
at sequence 128, seeds 0, 1, 2; the data split is seed 0 for every seed, the seeds are the training seeds):

    pip install -e .[peers]
    python benchmarks/peers.py --out runs/peers/minilm-rt

A plumbing check (minutes on 2 cores, not results):

    python benchmarks/peers.py --out /tmp/peers-smoke --seeds 0 --max-train 256 --max-examples 300 \
        --dense-epochs 1 --epochs 1 --bench-batch 1 --bench-repeats 3 --bench-warmup 1
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

VARIANTS = (
    "prunekit-taylor",
    "prunekit-taylor-kd",
    "prunekit-etaylor",
    "prunekit-etaylor-kd",
    "prunekit-etaylor-hkd",
    "prunekit-etaylor-r2-hkd",
    "prunekit-etaylor-r3-hkd",
    "prunekit-latency-kd",
    "prunekit-etaylor-latency",
    "prunekit-etaylor-latency-hkd",
    "prunekit-magnitude-kd",
    "tp-magnitude",
    "tp-taylor",
)
KD_LOGITS = {"teacher": "dense", "alpha": 0.5, "temperature": 2.0}  # benchmarks/suites/_common.yaml kd_logits
KD_HIDDEN = KD_LOGITS | {"hidden_weight": 1.0}  # and every block's hidden states (the pruned model keeps their size)


# ------------------------------------------------------------------------------------------------------ recipes


def data_section(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"dataset": args.dataset, "seed": args.data_seed}
    if args.max_train is not None:
        data["max_train_examples"] = args.max_train
    if args.max_examples is not None:
        data["max_examples"] = args.max_examples
    return data


def train_section(args: argparse.Namespace, seed: int, *, dense: bool = False) -> dict[str, Any]:
    return {"epochs": args.dense_epochs if dense else args.epochs, "lr": args.dense_lr if dense else args.lr,
            "batch_size": args.batch_size, "max_length": args.max_length, "seed": seed}  # fmt: skip


def bench_section(args: argparse.Namespace) -> dict[str, Any]:
    bench: dict[str, Any] = {"enabled": True, "batch": args.bench_batch, "seq": args.bench_seq,
                             "repeats": args.bench_repeats, "warmup": args.bench_warmup}  # fmt: skip
    if args.threads is not None:
        bench["threads"] = args.threads
    return bench


def dense_recipe(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {"model": args.model, "data": data_section(args), "train": train_section(args, seed, dense=True),
            "method": {"name": "dense"}, "bench": {"enabled": False}}  # fmt: skip


def prunekit_recipe(args: argparse.Namespace, seed: int, dense_dir: Path, name: str) -> dict[str, Any]:
    """The recipe of a prunekit variant: `prunekit-taylor[-kd]` (one-shot Taylor, the peer's structure),
    `prunekit-[e]taylor-latency[-[h]kd]` (one-shot Taylor, heads and neurons of any layer chosen by measured cost
    until the predicted `--speedup` at batch 32), `prunekit-magnitude-kd` (gradual magnitude of the peer's
    structure over the first 70% of the epochs, then the rest on the compacted model)."""
    calib = args.calib_batches * args.batch_size
    criterion = "taylor-elementwise" if name.startswith("prunekit-etaylor") else "taylor"
    if name == "prunekit-magnitude-kd":
        method = {"name": "magnitude", "pattern": ["head", "neuron"], "sparsity": args.heads, "scope": "layer"}
        if args.heads != args.neurons:
            raise SystemExit("prunekit-magnitude-kd prunes heads and neurons to one sparsity: give --heads = --neurons")
    elif "-latency" in name:
        method = {
            "name": "structured",
            "criterion": criterion,
            "scope": "latency",
            "speedup": args.speedup,
            "latency_batch": max(args.bench_batch),
            "latency_seq": args.bench_seq,
            "calibration_examples": calib,
        }
    else:
        method = {"name": "structured", "criterion": criterion, "heads": args.heads, "neurons": args.neurons,
                  "scope": "layer", "calibration_examples": calib}  # fmt: skip
        if rounds := re.search(r"-r(\d+)-", name):
            method["rounds"] = int(rounds.group(1))
    recipe = {"model": str(dense_dir), "data": data_section(args), "train": train_section(args, seed),
              "method": method, "bench": bench_section(args)}  # fmt: skip
    if name.endswith("-hkd"):
        return recipe | {"distill": dict(KD_HIDDEN)}
    return recipe | ({"distill": dict(KD_LOGITS)} if name.endswith("-kd") else {})


# -------------------------------------------------------------------------------------------- the prunekit CLI


def prunekit_cli(*args: str, capture: bool = False) -> str:
    """`prunekit ARGS` in this interpreter (raising on failure); its stdout when `capture`."""
    print("== prunekit " + " ".join(args), flush=True)
    cmd = [sys.executable, "-m", "prunekit.cli", *args]
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None).stdout or ""


def done(run_dir: Path) -> bool:
    return (run_dir / "prunekit.json").exists()


def prune_cli(out: Path, name: str, recipe: dict[str, Any], run_dir: Path, progress: bool) -> None:
    """`prunekit prune OUT/recipes/NAME.yaml --out RUN_DIR` (recipe written first; finished: skipped; a partial run
    resumed)."""
    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if done(run_dir):
        print(f"== {name}: done already ({run_dir})", flush=True)
        return
    partial = (run_dir.parent / f".{run_dir.name}.partial").exists()
    flags = (["--resume"] if partial else []) + ([] if progress else ["--no-progress"])
    prunekit_cli("prune", str(path), "--out", str(run_dir), *flags)


# -------------------------------------------------------------------------------------------- Torch-Pruning


def import_torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise SystemExit(
            "Torch-Pruning is not installed: pip install -e .[peers] (or leave the tp-* variants out with --variants)"
        ) from exc
    return tp


def _snapshot(model, topo) -> list[dict[str, Any]]:
    """Per layer, the weights whose rows / columns pruning removes (to see afterwards which units stayed)."""
    from prunekit.topology import get_module

    layers = []
    for b in topo.blocks:
        a, f = b.attention, b.ffn
        entry: dict[str, Any] = {}
        if a is not None and a.num_heads:
            entry.update({k: get_module(model, getattr(a, k)).weight.detach().clone() for k in ("q", "k", "v")})
            entry["o"] = get_module(model, a.o).weight.detach().t().clone()  # columns as rows
        if f is not None:
            entry["ffn_in"] = get_module(model, f.inputs[0]).weight.detach().clone()
            entry["ffn_out"] = get_module(model, f.output).weight.detach().t().clone()
        layers.append(entry)
    return layers


def _rows_kept(before, after) -> list[int]:
    """Indices of `before`'s rows that `after` holds, in `after`'s order (pruning slices weights: exact copies)."""
    index = {row.numpy().tobytes(): i for i, row in enumerate(before.float())}
    kept = [index.get(row.numpy().tobytes()) for row in after.detach().float()]
    if any(i is None for i in kept):
        raise RuntimeError("a pruned weight holds a row the dense weight does not: not a slice of it")
    return kept


def check_whole_units(model, topo_before, snapshot) -> list[dict[str, Any]]:
    """Per layer, which heads and how many FFN neurons the pruned `model` kept, checked to be whole units: the
    query rows kept are whole heads, key / value rows the same heads, the output projection's columns the same
    features, the FFN output's columns the neurons its input kept, the hidden size unchanged. Raises otherwise."""
    from prunekit.topology import get_module

    d = topo_before.hidden_size
    layers = []
    for b, snap in zip(topo_before.blocks, snapshot, strict=True):
        a, f = b.attention, b.ffn
        entry: dict[str, Any] = {"layer": b.index}
        if "q" in snap:
            q = _rows_kept(snap["q"], get_module(model, a.q).weight)
            dh = a.head_dim
            heads = sorted({i // dh for i in q})
            whole = sorted(q) == [h * dh + j for h in heads for j in range(dh)]
            same = all(_rows_kept(snap[k], get_module(model, getattr(a, k)).weight) == q for k in ("k", "v"))
            same_o = _rows_kept(snap["o"], get_module(model, a.o).weight.t()) == q
            if not (whole and same and same_o):
                raise RuntimeError(f"layer {b.index}: Torch-Pruning did not remove whole heads (query rows {q})")
            entry["heads"] = heads
        if "ffn_in" in snap:
            kept = _rows_kept(snap["ffn_in"], get_module(model, f.inputs[0]).weight)
            if _rows_kept(snap["ffn_out"], get_module(model, f.output).weight.t()) != kept:
                raise RuntimeError(f"layer {b.index}: the FFN output kept other neurons than its input")
            entry["ffn_width"] = len(kept)
        for name in filter(None, (a and a.q, f and f.inputs[0])):
            if get_module(model, name).weight.shape[1] != d:
                width = get_module(model, name).weight.shape[1]
                raise RuntimeError(f"{name}: the hidden size changed ({d} -> {width})")
        layers.append(entry)
    return layers


def torch_pruning_prune(model, criterion: str, heads: float, neurons: float, batches: list[dict]) -> dict[str, Any]:
    """Remove `heads` of the attention heads and `neurons` of the FFN neurons of every layer of `model` (in place)
    with Torch-Pruning, ranked by `criterion` (magnitude: L2 of the group's weights; taylor: |w * dL/dw| with the
    gradients of `batches`). Returns what it kept per layer, checked to be whole heads and neurons."""
    import torch
    from torch import nn

    from prunekit.compact.remove import sync_config
    from prunekit.topology import describe, family_of, get_module

    tp = import_torch_pruning()
    topo, fam = describe(model), family_of(model)
    num_heads: dict[nn.Module, int] = {}
    ratios: dict[nn.Module, float] = {}  # per-layer scopes; everything else (the hidden size) keeps ratio 0
    for b in topo.blocks:
        a, f = b.attention, b.ffn
        if a is not None and a.num_heads and heads > 0:
            if a.fused_qkv:
                raise SystemExit(f"{type(model).__name__}: fused q/k/v; this peer script handles separate q, k, v")
            q, k, v = (get_module(model, n) for n in (a.q, a.k, a.v))
            num_heads.update({q: a.num_heads, k: a.num_kv_heads, v: a.num_kv_heads})
            ratios[q] = heads  # > 0 so Torch-Pruning visits the group; prune_head_dims=False keeps every head's dims
        if f is not None and neurons > 0:
            ratios[get_module(model, f.inputs[0])] = neurons
    inside = topo.layers_path + "."
    ignored = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(inside)]
    importance = (
        tp.importance.GroupTaylorImportance() if criterion == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)
    )
    example = {k: v for k, v in batches[0].items() if k != "labels"}
    snapshot = _snapshot(model, topo)
    model.eval()  # no dropout: the gradients of a deterministic function (as prunekit's scores)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        global_pruning=False,
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=heads,
        ignored_layers=ignored,
        output_transform=lambda out: out.logits.sum(),
    )
    if criterion == "taylor":
        model.zero_grad(set_to_none=True)
        for batch in batches:
            model(**batch).loss.backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for b in topo.blocks:  # the attention modules' head counts follow the pruned projections
        a = b.attention
        if a is None or not a.num_heads or heads <= 0:
            continue
        dh = a.head_dim
        q, k = get_module(model, a.q), get_module(model, a.k)
        h, kv = q.out_features // dh, k.out_features // dh
        if h != pruner.num_heads[q]:
            raise RuntimeError(f"layer {b.index}: {q.out_features} query features but {pruner.num_heads[q]} heads")
        fam.head_attrs(get_module(model, a.core), h, kv, dh)
    sync_config(model)
    layers = check_whole_units(model, topo, snapshot)
    with torch.no_grad():
        logits = model(**example).logits
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError("the pruned model's logits are not finite")
    # the package's own __version__ string lags its releases (1.6.1 reports 1.6.0): the installed distribution's
    return {"library": f"torch-pruning {importlib.metadata.version('torch-pruning')}", "layers": layers}


class Peer:
    """The Torch-Pruning variants of one output folder: data and task loaded once, dense models per seed."""

    def __init__(self, args: argparse.Namespace) -> None:
        from prunekit.pipelines.stages import load_splits
        from prunekit.recipe import DataSpec
        from prunekit.tasks import get_task

        self.args = args
        self.spec = DataSpec(**data_section(args))
        self.data, kind = load_splits(self.spec)
        self.task = get_task(kind)

    def run(self, dense_dir: Path, run_dir: Path, criterion: str, seed: int) -> None:
        import torch

        from prunekit.bench import bench
        from prunekit.masks import sparsity_report
        from prunekit.pipelines.stages import evaluate_splits, fmt_metrics, split_info, task_info
        from prunekit.recipe import BenchSpec
        from prunekit.report import write_report
        from prunekit.runs.directory import partial_dir, publish
        from prunekit.runs.io import load, read_manifest, write_model
        from prunekit.runs.source import source_fingerprint, sparsity_summary
        from prunekit.tasks.base import calibration_batches
        from prunekit.train.config import TrainConfig
        from prunekit.train.loop import train

        args, task, data = self.args, self.task, self.data
        work = partial_dir(run_dir)
        shutil.rmtree(work, ignore_errors=True)  # an interrupted Torch-Pruning run starts over
        work.mkdir(parents=True)
        cfg = TrainConfig(**train_section(args, seed))
        dense_manifest = read_manifest(dense_dir)
        model, tok = load(dense_dir, with_tokenizer=True, block_sparse="never")
        if task.model_head == "sequence-classification" and getattr(model.config, "problem_type", None) is None:
            model.config.problem_type = "single_label_classification" if model.config.num_labels > 1 else "regression"
        reference = load(dense_dir, block_sparse="never").eval()
        dense_params = sparsity_report(reference)["params"]
        dense_structure = dense_manifest.structure
        n = args.calib_batches * cfg.batch_size
        batches = list(calibration_batches(task, data["train"], tok, cfg.max_length, cfg.batch_size, n)())

        t0 = time.perf_counter()
        report = torch_pruning_prune(model, criterion, args.heads, args.neurons, batches)
        score_s = time.perf_counter() - t0
        for entry in report["layers"]:
            print(f"   layer {entry['layer']}: heads kept {entry.get('heads')}, FFN width {entry.get('ffn_width')}")
        res = train(model.train(), tok, task, data, config=cfg, work_dir=work, progress=args.progress, stage="prune")
        model = res.model.eval()
        timings = {"calibrate_s": round(score_s, 2), "prune_s": round(res.train_s, 2),
                   "pruning_stage_s": round(score_s + res.train_s, 2)}  # fmt: skip

        metrics: dict[str, Any] = {"dense": {s: dense_manifest.metrics[s] for s in ("validation", "test")
                                             if s in dense_manifest.metrics}}  # fmt: skip
        metrics.update(evaluate_splits(task, model, data, tok, cfg))
        print(f"== tp-{criterion}: {fmt_metrics(metrics, task.main_metric)}", flush=True)
        model = model.cpu()  # benchmarked on the CPU beside the dense model, as `prunekit prune` does
        b = BenchSpec(**bench_section(args))
        with torch.no_grad():
            measured = bench(model, reference, grid=tuple((x, b.seq) for x in b.batch), warmup=b.warmup,
                             repeats=b.repeats, threads=b.threads, memory=False)  # fmt: skip
        saved = sparsity_report(model)
        saved |= {"params": dense_params, "sparsity": 1 - saved["kept"] / dense_params if dense_params else 0}
        summary = sparsity_summary(saved)
        method = {"name": f"torch-pruning-{criterion}", "importance": "GroupTaylorImportance()" if criterion ==
                  "taylor" else "GroupMagnitudeImportance(p=2)", "heads": args.heads, "neurons": args.neurons,
                  "calibration_batches": len(batches) if criterion == "taylor" else 0}  # fmt: skip
        recipe = {
            "model": str(dense_dir),
            "data": self.spec.model_dump(mode="json"),
            "train": cfg.model_dump(mode="json"),
            "method": method,
            "bench": b.model_dump(mode="json"),
        }
        write_model(
            model,
            work,
            tok,
            source_model=str(dense_dir),
            source_fingerprint=source_fingerprint(str(dense_dir)),
            method=method["name"],
            recipe=recipe,
            task=task_info(task, self.spec, data),
            split=split_info(self.spec, data),
            metrics=metrics,
            timings=timings,
            sparsity={"mask": summary, "saved": summary},
            bench=measured,
            history=list(res.history),
            dense_structure=[e.model_dump() for e in dense_structure],
            method_report=method | report,
        )
        write_report(work, name=run_dir.name)
        publish(work, run_dir)


# ------------------------------------------------------------------------------------------------------- table


def manifest(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "prunekit.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_metric(m: dict[str, Any]) -> float | None:
    key = (m.get("task") or {}).get("main_metric", "accuracy")
    return (m.get("metrics") or {}).get("test", {}).get(key)


def row_values(run_dir: Path, dense: dict[str, Any] | None, batches: list[int], rebench: Path | None) -> dict[str, Any]:
    """A finished run's numbers for the table (None where it has none)."""
    m = manifest(run_dir)
    if m is None:
        return {}
    b = json.loads(rebench.read_text()) if rebench is not None and rebench.exists() else m.get("bench")
    speed = {r["batch"]: r["speedup"] for r in (b or {}).get("latency", [])}
    kept = ((b or {}).get("params") or {}).get("ratio", {}).get("blocks")
    t = m.get("timings") or {}
    stage = t.get("pruning_stage_s", t.get("calibrate_s", 0) + t.get("prune_s", 0)) if "prune_s" in t else None
    acc, base = test_metric(m), test_metric(dense) if dense else None
    delta = acc - base if acc is not None and base is not None else None
    speeds = {f"b{x}": speed.get(x) for x in batches}
    return {"acc": acc, "delta": delta, **speeds, "kept": kept, "stage_min": stage / 60 if stage else None}


def table(out: Path, seeds: list[int], variants: list[str], batches: list[int], rebenched: bool) -> str:
    keys = ["acc", "delta", *(f"b{x}" for x in batches), "kept", "stage_min"]
    fmt = {"acc": "{:.4f}", "delta": "{:+.4f}", "kept": "{:.1%}", "stage_min": "{:.1f}"}
    head = ["variant", "seed", "test accuracy", "Δ vs dense", *(f"speedup b{x}" for x in batches),
            "block params kept", "pruning stage (min)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]

    def cell(key: str, value: float | None) -> str:
        return "-" if value is None else fmt.get(key, "{:.2f}x").format(value)

    dense_acc = {s: test_metric(m) for s in seeds if (m := manifest(out / f"s{s}" / "dense"))}
    for name in ["dense", *variants]:
        per_seed = []
        for s in seeds:
            d = manifest(out / f"s{s}" / "dense")
            if name == "dense":
                values = {"acc": dense_acc.get(s)} if s in dense_acc else {}
            else:
                again = out / "rebench" / f"{name}-s{s}.json"
                values = row_values(out / f"s{s}" / name, d, batches, again if rebenched else None)
            if values:
                per_seed.append(values)
                lines.append(f"| {name} | {s} | " + " | ".join(cell(k, values.get(k)) for k in keys) + " |")
            else:
                lines.append(f"| {name} | {s} | " + " | ".join("-" for _ in keys) + " |")
        if len(seeds) > 1 and per_seed:
            mean = {k: statistics.mean(v) if (v := [p[k] for p in per_seed if p.get(k) is not None]) else None
                    for k in keys}  # fmt: skip
            lines.append(f"| **{name}** | mean of {len(per_seed)} | " + " | ".join(cell(k, mean[k]) for k in keys)
                         + " |")  # fmt: skip
    return "\n".join(lines)


def rebench_runs(out: Path, seeds: list[int], variants: list[str], args: argparse.Namespace) -> None:
    """Every finished run measured again with `prunekit bench` beside its source, one after another."""
    flags = [f for x in args.bench_batch for f in ("--batch", str(x))]
    flags += ["--seq", str(args.bench_seq), "--repeats", str(args.bench_repeats), "--warmup", str(args.bench_warmup)]
    flags += ["--no-memory", "--json"]
    if args.threads is not None:
        flags += ["--threads", str(args.threads)]
    for s in seeds:
        for name in variants:
            run_dir = out / f"s{s}" / name
            if not done(run_dir):
                continue
            target = out / "rebench" / f"{name}-s{s}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                target.write_text(prunekit_cli("bench", str(run_dir), *flags, capture=True))
            except subprocess.CalledProcessError as exc:
                print(f"== rebench {run_dir}: exit {exc.returncode}", flush=True)


# -------------------------------------------------------------------------------------------------------- main


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/peers/minilm-rt", help="folder of the runs (default: %(default)s)")
    ap.add_argument("--seeds", type=ints, default=[0, 1, 2], help="training seeds, e.g. 0,1,2 (default)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--data-seed", type=int, default=0, help="the split, the same for every training seed")
    ap.add_argument("--max-train", type=int, default=None, help="cap on the training split (default: all of it)")
    ap.add_argument("--max-examples", type=int, default=None, help="cap on every split (plumbing runs)")
    ap.add_argument("--dense-epochs", type=int, default=3)
    ap.add_argument("--dense-lr", type=float, default=5e-5)
    ap.add_argument("--epochs", type=int, default=2, help="recovery fine-tuning of every pruned model")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64, help="training and evaluation (RT snippets are short)")
    ap.add_argument("--heads", type=float, default=0.5, help="fraction of every layer's attention heads removed")
    ap.add_argument("--neurons", type=float, default=0.5, help="fraction of every layer's FFN neurons removed")
    ap.add_argument("--speedup", type=float, default=2.0, help="prunekit-latency-kd: the predicted speedup to reach")
    ap.add_argument("--calib-batches", type=int, default=32, help="training batches the Taylor scores are taken on")
    ap.add_argument("--bench-batch", type=ints, default=[1, 32])
    ap.add_argument("--bench-seq", type=int, default=128)
    ap.add_argument("--bench-repeats", type=int, default=10)
    ap.add_argument("--bench-warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads while benchmarking (default: all)")
    ap.add_argument("--rebench", action="store_true", help="re-measure every run with `prunekit bench` at the end")
    ap.add_argument(
        "--table-only", action="store_true", help="the table of what is finished (give the same flags), run nothing"
    )
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}: use {', '.join(VARIANTS)}")
    if not 0 <= args.heads < 1 or not 0 <= args.neurons < 1:
        ap.error("--heads and --neurons are fractions in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> list[str]:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    if not args.table_only:
        if any(v.startswith("tp-") for v in args.variants):
            import_torch_pruning()  # before an hour of dense fine-tuning
        peer: Peer | None = None
        for seed in args.seeds:
            dense_dir = out / f"s{seed}" / "dense"
            try:
                prune_cli(out, f"dense-s{seed}", dense_recipe(args, seed), dense_dir, args.progress)
            except subprocess.CalledProcessError as exc:
                failed.append(f"dense-s{seed} (exit {exc.returncode}; its variants not run)")
                continue
            for name in args.variants:
                run_dir = out / f"s{seed}" / name
                try:
                    if name.startswith("prunekit-"):
                        recipe = prunekit_recipe(args, seed, dense_dir, name)
                        prune_cli(out, f"{name}-s{seed}", recipe, run_dir, args.progress)
                    elif done(run_dir):
                        print(f"== {name}-s{seed}: done already ({run_dir})", flush=True)
                    else:
                        print(f"== {name}-s{seed}: Torch-Pruning from {dense_dir} into {run_dir}", flush=True)
                        peer = peer or Peer(args)
                        peer.run(dense_dir, run_dir, name.removeprefix("tp-"), seed)
                except subprocess.CalledProcessError as exc:
                    failed.append(f"{name}-s{seed} (exit {exc.returncode})")
                except Exception as exc:  # noqa: BLE001 - report it, go on with the other variants
                    traceback.print_exc()
                    failed.append(f"{name}-s{seed} ({type(exc).__name__}: {exc})")
        if args.rebench:
            rebench_runs(out, args.seeds, args.variants, args)
    text = table(out, args.seeds, args.variants, args.bench_batch, args.rebench)
    settings = (f"{args.model} on {args.dataset} (split seed {args.data_seed}, training examples "
                f"{args.max_train or 'all'}); dense {args.dense_epochs} epochs at lr {args.dense_lr:g}; "
                f"{args.heads:.0%} of the heads and {args.neurons:.0%} of the FFN neurons of every layer removed; "
                f"{args.epochs} epochs at lr {args.lr:g}, batch {args.batch_size}, max_length {args.max_length}; "
                f"Taylor on (up to) {args.calib_batches} training batches; speedup at sequence {args.bench_seq}"
                + (" (re-measured)" if args.rebench else ""))  # fmt: skip
    (out / "peers.md").write_text(f"{settings}\n\n{text}\n")
    print(f"\n{settings}\n\n{text}", flush=True)
    if failed:
        print("failed: " + "; ".join(failed), flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
