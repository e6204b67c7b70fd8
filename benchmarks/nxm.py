"""NxMTransformer suite: dense vs ASP vs ADMM vs ADMM + KD at N:M (default 2:4) on one dataset, same budget.

Every pruned run starts from the same dense fine-tuned run (the suite's first run, `dense`), trains for the
same number of epochs with the same learning rate and evaluates on the same seeded test split:
- `asp`: one-shot magnitude N:M of the fine-tuned weights, masked fine-tuning for all epochs (the paper's baseline);
- `admm`: ADMM towards N:M for the first `--admm-end` of the steps (Z/U every `--admm-interval` steps), hard prune,
  masked fine-tuning for the rest; no teacher; the W-step's penalty as its proximal step (`w_step: proximal`);
- `admm-kd`: the same with logits distillation from the dense run (alpha 0.5, T 2);
- `admm-loss`: `admm` with the paper's W-step (the penalty as a loss term through AdamW), no teacher.
Each run is `prunekit prune RECIPE` on a recipe this script writes into OUT/recipes/ (so every number is
reproducible from its recipe); finished runs are skipped and interrupted ones resumed, so re-running the command
continues. The table at the end is `prunekit compare` over the runs.

    python benchmarks/nxm.py --dataset rotten_tomatoes --out runs/nxm/rt
    python benchmarks/nxm.py --dataset vitaminc --out runs/nxm/vitc --max-length 128
    python benchmarks/nxm.py --dataset rotten_tomatoes --out runs/nxm/rt-quick --quick   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _suite import compare, data_and_common, dense_recipe, run, seed_summary


def recipes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The suite's recipes by run name; pruned runs once per training seed (`-sN` for seeds other than 0)."""
    data, common = data_and_common(args)
    dense_dir = str(Path(args.out) / "dense")
    pruned_train = {"epochs": args.epochs, "lr": args.lr, **common}
    admm = {"name": "admm", "pattern": args.pattern, "rho": args.rho, "rho_growth": args.rho_growth,
            "admm_interval": args.admm_interval, "end": args.admm_end, "w_step": "proximal", "pull": args.pull}
    admm_loss = admm | {"w_step": "loss"}
    del admm_loss["pull"]  # fmt: skip
    kd = {"teacher": "dense", "alpha": 0.5, "temperature": 2.0}
    pruned = {"model": dense_dir, "data": data, "train": pruned_train}
    variants = {
        "asp": pruned | {"method": {"name": "asp", "pattern": args.pattern}},
        "admm": pruned | {"method": admm},
        "admm-kd": pruned | {"method": admm, "distill": kd},
        "admm-loss": pruned | {"method": admm_loss},
    }
    out = {"dense": dense_recipe(args, data, common)}
    for seed in args.train_seeds:
        for name, recipe in variants.items():
            key = name if seed == args.seed else f"{name}-s{seed}"
            out[key] = recipe | {"train": pruned_train | {"seed": seed}}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=4000, help="training examples (seeded, stratified)")
    ap.add_argument("--max-examples", type=int, default=None, help="cap on every split (e.g. vitaminc's test)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--dense-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every pruned run (the shared budget)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--rho", type=float, default=4e-3)
    ap.add_argument("--rho-growth", type=float, default=1.2)
    ap.add_argument("--pull", type=float, default=0.01, help="proximal W-step: fraction of the way to Z - U per step")
    ap.add_argument("--admm-interval", type=int, default=25, help="optimizer steps between Z/U updates")
    ap.add_argument("--admm-end", type=float, default=2 / 3, help="fraction of steps under ADMM before the prune")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=None, help="pruned runs per seed (default: --seed)")
    ap.add_argument("--only", nargs="*", help="run only these of dense, asp, admm, admm-kd, admm-loss (any seed)")
    ap.add_argument("--quick", action="store_true", help="1,000 training examples, 1 dense + 2 pruned epochs")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_train, args.dense_epochs, args.epochs, args.admm_interval = 1000, 1, 2, 8
        args.max_examples = args.max_examples or 1000
    args.train_seeds = args.train_seeds or [args.seed]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = recipes(args)
    for name, recipe in todo.items():
        if not args.only or name.split("-s")[0] in args.only:
            run(name, recipe, out, args.progress)
    print(seed_summary(compare(out, list(todo))))


if __name__ == "__main__":
    main()
