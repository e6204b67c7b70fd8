"""NAS structural pruning suite: search, then extract and measure the sub-networks at given block-parameter fractions.

One `prunekit search` on a recipe this script writes into OUT/recipe.yaml (dense fine-tune, importance reordering,
super-network training, the multi-objective search over `--budget` sub-networks, the baselines on the dense model),
then for each `--targets` fraction of the dense model's transformer-block parameters the Pareto point with the most
block parameters at or under it is extracted (`prunekit extract`, optionally fine-tuned further) and benchmarked
against the dense model (`prunekit bench`, batch 1 and 32, sequence 128) on this machine. Printed: the front's and
the baselines' hypervolumes, the stage wall times beside the dense fine-tune's, and one row per extracted model.
Finished steps are skipped, so re-running the command continues; nothing is timed while another step runs.

    python benchmarks/nas.py --dataset rotten_tomatoes --out runs/nas/rt
    python benchmarks/nas.py --dataset vitaminc --out runs/nas/vitc --max-length 128 --max-examples 2000 \
        --max-train 8000
    python benchmarks/nas.py --out runs/nas/quick --quick     # ~15 min on 2 cores: plumbing, not results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from _suite import data_and_common, prunekit


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    data, common = data_and_common(args)
    return {
        "model": args.model,
        "data": data,
        "finetune": {"epochs": args.dense_epochs, "lr": 1e-4, **common},
        "train": {"epochs": args.epochs, "lr": 1e-4, **common},
        "method": {"name": "nas", "space": args.space, "strategy": args.strategy, "num_random": 2, "reorder": True,
                   "importance_examples": 512},  # fmt: skip
        "search": {"searcher": args.searcher, "objective": "params", "budget": args.budget, "seed": args.seed,
                   "max_eval_examples": args.max_eval, "baselines": ["heads", "layers", "magnitude"],
                   "baseline_sizes": [0.25, 0.5, 0.7, 0.85]},  # fmt: skip
    }


def pick(points: list[dict], target: float) -> dict | None:
    """The front's point with the most block parameters at or under `target` (its most accurate one there)."""
    under = [p for p in points if p["block_params"] <= target + 1e-9]
    return max(under, key=lambda p: p["block_params"]) if under else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=4000, help="training examples (seeded, stratified)")
    ap.add_argument("--max-examples", type=int, default=None, help="cap on the evaluation splits (e.g. vitaminc)")
    ap.add_argument("--max-eval", type=int, default=None, help="validation examples per searched candidate")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--dense-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="super-network training epochs")
    ap.add_argument("--space", default="small")
    ap.add_argument("--strategy", default="full")
    ap.add_argument("--searcher", default="morea")
    ap.add_argument("--budget", type=int, default=100, help="sub-networks evaluated (initial design included)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3], help="block-parameter fractions")
    ap.add_argument("--finetune-epochs", type=int, default=0, help="further fine-tuning of each extracted model")
    ap.add_argument("--quick", action="store_true", help="1,000 training examples, 1 + 1 epochs, budget 20")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_train, args.dense_epochs, args.epochs, args.budget = 1000, 1, 1, 20
        args.max_examples, args.max_eval = args.max_examples or 500, args.max_eval or 300
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(args), sort_keys=False))
    search = out / "search"
    if not (search / "pareto.json").exists():
        prunekit("search", str(path), "--out", str(search), "--no-progress", "--overwrite")
    summary = json.loads((search / "pareto.json").read_text())
    key = summary["metric"]
    dense_test = summary["dense"]["test"][key]
    rows = []
    for target in args.targets:
        point = pick(summary["points"], target)
        if point is None:
            print(f"no Pareto point at or under {target:.0%} of the block parameters", flush=True)
            continue
        run_dir = out / f"extract-{round(target * 100)}"
        if not (run_dir / "prunekit.json").exists():
            prunekit("extract", str(search), str(point["index"]), str(run_dir), "--no-progress", "--overwrite",
                "--finetune-epochs", str(args.finetune_epochs))  # fmt: skip
        bench = json.loads(prunekit("bench", str(run_dir), "--batch", "1", "--batch", "32", "--seq", "128", "--json",
                               capture=True))  # fmt: skip
        test = json.loads((run_dir / "prunekit.json").read_text())["metrics"]["test"][key]
        speed = {r["batch"]: r["speedup"] for r in bench["latency"]}
        rows.append([f"{target:.0%}", point["index"], f"{point['block_params']:.3f}", f"{point['objectives'][1]:.3f}",
                     f"{test:.4f}", f"{(test - dense_test) / dense_test:+.1%}", f"{speed.get(1, 0):.2f}x",
                     f"{speed.get(32, 0):.2f}x"])  # fmt: skip
    print(report(summary, rows))


def report(summary: dict, rows: list[list]) -> str:
    key, t = summary["metric"], summary.get("timings", {})
    hv = summary.get("baseline_hypervolume", {})
    lines = [
        f"front: {len(summary['points'])} points from {summary['evaluations']} evaluations; hypervolume "
        f"{summary['hypervolume']:.4f}; baselines: " + ", ".join(f"{k} {v:.4f}" for k, v in hv.items()),
        "wall time (min): " + ", ".join(f"{k.removesuffix('_s')} {v / 60:.1f}" for k, v in t.items())
        + (f"; stage 1 + 2 / dense fine-tune = {stage_ratio(t):.1f}x" if t.get("finetune_s") else ""),
        f"dense test {key} {summary['dense']['test'][key]:.4f}",
        "",
        f"| target | point | block params | params | test {key} | rel. change | speedup b1 | speedup b32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def stage_ratio(t: dict) -> float:
    """Super-network training + search (+ reordering) over the one dense fine-tune the search also ran."""
    return (t.get("reorder_s", 0) + t.get("supernet_s", 0) + t.get("search_s", 0)) / t["finetune_s"]


if __name__ == "__main__":
    main()
