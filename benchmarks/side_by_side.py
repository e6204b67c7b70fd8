"""Side by side: the four methods and the baselines on one model x dataset, from one dense run, same data and budget.

Every pruned run starts from the suite's dense fine-tune (`dense`), trains `--epochs` on the same seeded data and
benchmarks itself against the dense model at the end (batch 1 and 32, sequence 128, this machine), so run nothing
else meanwhile. Where a method can aim, it aims at `--sparsity` of the block weights (kept 1 - s):
- baselines: `magnitude-hn` / `movement-hn` (gradual magnitude / movement pruning of heads and FFN neurons, per
  layer: structured, they speed up), `l1` (plain L1 in target mode: unstructured zeros), `asp` (2:4 one-shot,
  masked fine-tuning);
- methods: `neuroprune` (target mode; merged heads and dead neurons removed), `nxm` (ADMM to 2:4 with KD from the
  dense run), `mlpruning` (step 1, heads and rows to 1 - s, KD), `nas` (super-network trained `--epochs`, a
  `--nas-budget` MO-REA search, the Pareto point with the most block parameters at or under 1 - s extracted).
2:4 runs keep 50% whatever `--sparsity` is, and speed up only with GPU sparse kernels. The table is
`prunekit compare --at SPEEDUP` over the runs (the best method and baseline at that measured speedup), the spread
over `--seeds` follows. Finished runs are skipped, interrupted ones resumed; a run that fails is reported and the
suite goes on (a method that does not support the model's family says so in its error).

    python benchmarks/side_by_side.py minilm-rt --out runs/side/minilm-rt
    python benchmarks/side_by_side.py minilm-rt --out runs/side/quick --quick      # ~15 min on 2 cores: plumbing
    python benchmarks/side_by_side.py smollm2-enwiki --out runs/side/smollm2-enwiki --seeds 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from _suite import KD_MLPRUNING, compare, data_and_common, dense_recipe, prunekit, run, seed_summary

# model, dataset and the settings that differ per suite (each overridable on the command line)
SUITES: dict[str, dict[str, Any]] = {
    "minilm-rt": {"model": "minilm-l6", "dataset": "rotten_tomatoes", "max_length": 64, "max_train": 4000},
    "minilm-vitaminc": {"model": "minilm-l6", "dataset": "vitaminc", "max_length": 128, "max_train": 8000,
                        "max_examples": 2000},  # fmt: skip
    "mpnet-rt": {"model": "mpnet-base", "dataset": "rotten_tomatoes", "max_length": 64, "max_train": 4000},
    "minilm-squad": {"model": "minilm-l6", "dataset": "squad", "max_length": 256, "max_train": 4000,
                     "max_examples": 1000},  # fmt: skip
    "smollm2-enwiki": {"model": "smollm2-135m", "dataset": "enwiki", "max_length": 256, "max_train": None,
                       "batch_size": 4, "lr": 5e-5, "dense_lr": 5e-5, "dense_epochs": 1, "epochs": 1},  # fmt: skip
}
BASELINES = ("magnitude-hn", "movement-hn", "l1", "asp")
METHODS = ("neuroprune", "nxm", "mlpruning", "nas")
KD_LOGITS = {"teacher": "dense", "alpha": 0.5, "temperature": 2.0}


def pruned_recipes(args: argparse.Namespace, start: str, data: dict, train: dict) -> dict[str, dict[str, Any]]:
    """The recipes of the baselines and of the methods trained by `prunekit prune` (NAS is searched apart)."""
    s = args.sparsity
    structured = {"pattern": ["head", "neuron"], "sparsity": s, "scope": "layer"}
    base = {"model": start, "data": data, "train": train, "bench": args.bench}
    methods = {
        "magnitude-hn": {"method": {"name": "magnitude", **structured}},
        "movement-hn": {"method": {"name": "movement", **structured}},
        "l1": {"method": {"name": "l1", "target_sparsity": s}},
        "asp": {"method": {"name": "asp", "pattern": "2:4"}},
        "neuroprune": {"method": {"name": "neuroprune", "target_sparsity": s}},
        "nxm": {"method": {"name": "admm", "pattern": "2:4", "w_step": "proximal", **args.admm}, "distill": KD_LOGITS},
        "mlpruning": {"method": {"name": "mlpruning", "step": 1, "target": round(1 - s, 4)}, "distill": KD_MLPRUNING},
    }
    return {name: base | extra for name, extra in methods.items() if name in args.only}


def nas_recipe(args: argparse.Namespace, start: str, data: dict, train: dict, seed: int) -> dict[str, Any]:
    return {
        "model": start,
        "data": data,
        "train": train,
        "bench": args.bench,
        "method": {"name": "nas", "space": "small", "strategy": "full", "num_random": 2, "reorder": True,
                   "importance_examples": 512},  # fmt: skip
        "search": {"searcher": "morea", "objective": "params", "budget": args.nas_budget, "seed": seed,
                   "max_eval_examples": args.max_eval, "baselines": []},  # fmt: skip
    }


def nas(args: argparse.Namespace, start: str, data: dict, train: dict, seed: int, name: str) -> None:
    """`prunekit search`, then `prunekit extract` of the point with the most block parameters at or under 1 - s."""
    import yaml

    out = Path(args.out)
    if (out / name / "prunekit.json").exists():
        print(f"== {name}: done already", flush=True)
        return
    search = out / f"{name}-search"
    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(nas_recipe(args, start, data, train, seed), sort_keys=False))
    if not (search / "pareto.json").exists():
        again = "--resume" if (search.parent / f".{search.name}.partial").exists() else "--overwrite"
        prunekit("search", str(path), "--out", str(search), "--no-progress", again)
    points = json.loads((search / "pareto.json").read_text())["points"]
    kept = 1 - args.sparsity
    under = [p for p in points if p["block_params"] <= kept + 1e-9]
    if not under:
        raise RuntimeError(f"no Pareto point at or under {kept:.0%} of the block parameters in {search}")
    point = max(under, key=lambda p: p["block_params"])
    prunekit("extract", str(search), str(point["index"]), str(out / name), "--no-progress", "--overwrite")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", choices=sorted(SUITES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--sparsity", type=float, default=0.6, help="of the block weights, where a method can aim")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of the pruned runs")
    ap.add_argument("--seed", type=int, default=0, help="data split and dense fine-tune seed")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every pruned run (the shared budget)")
    ap.add_argument("--dense-epochs", type=int, default=None)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--max-examples", type=int, default=None, help="cap on every split but the training one")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--nas-budget", type=int, default=60, help="sub-networks the NAS search evaluates")
    ap.add_argument("--max-eval", type=int, default=None, help="validation examples per searched sub-network")
    ap.add_argument("--at", type=float, default=2.0, help="measured speedup (batch 32) to name the best run at")
    ap.add_argument("--only", nargs="+", default=[*BASELINES, *METHODS], choices=[*BASELINES, *METHODS])
    ap.add_argument("--quick", action="store_true", help="600 training examples, 1 + 1 epochs, NAS budget 10")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    suite = {"dense_epochs": 2, "epochs": 2, "lr": 5e-5, "dense_lr": 1e-4, "batch_size": 32} | SUITES[args.suite]
    for key in ("epochs", "dense_epochs", "max_train", "max_examples", "max_length"):
        if getattr(args, key) is None:
            setattr(args, key, suite.get(key))
    args.model, args.dataset, args.lr = suite["model"], suite["dataset"], suite["lr"]
    args.bench = {"batch": [1, 32], "seq": 128}
    # the 2:4 suite's ADMM schedule (benchmarks/nxm.py): Z / U every 25 steps with rho growing, pruned at 2/3
    args.admm = {"rho": 4e-3, "rho_growth": 1.2, "admm_interval": 25, "end": round(2 / 3, 4), "pull": 0.01}
    if args.quick:
        args.max_train, args.dense_epochs, args.epochs, args.nas_budget = 600, 1, 1, 10
        args.max_examples, args.max_eval = args.max_examples or 300, args.max_eval or 200
        args.bench |= {"repeats": 3, "warmup": 1}
        args.admm["admm_interval"] = 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, common = data_and_common(args)
    if args.max_train is None:
        data.pop("max_train_examples")
    common["batch_size"] = suite["batch_size"]
    dense = dense_recipe(args, data, common)
    dense["train"]["lr"] = suite["dense_lr"]
    run("dense", dense, out, args.progress)
    start = str(out / "dense")
    names, failed = ["dense"], []
    for seed in args.seeds:
        train = {"epochs": args.epochs, "lr": args.lr, **common, "seed": seed}
        tag = "" if seed == args.seed else f"-s{seed}"
        for name, recipe in pruned_recipes(args, start, data, train).items():
            names.append(name + tag)
            try:
                run(name + tag, recipe, out, args.progress)
            except subprocess.CalledProcessError as exc:
                failed.append(f"{name + tag} (exit {exc.returncode})")
        if "nas" in args.only:
            names.append("nas" + tag)
            try:
                nas(args, start, data, train, seed, "nas" + tag)
            except (subprocess.CalledProcessError, RuntimeError) as exc:
                failed.append(f"nas{tag} ({exc})")
    done = compare(out, names, at=args.at)
    print(seed_summary(done[1:]))
    if failed:
        print("failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
