"""NeuroPrune suite: NeuroPrune vs the plain-L1 baseline at the same sparsities, epochs and data, from one dense run.

Every run starts from the same dense fine-tuned model (`--dense RUN_DIR`, or the suite's own `dense` run) and
trains `--epochs` with the same learning rate on the same seeded data, in target mode: the regulariser's scale
is steered so the near-zero fraction follows the cubic schedule, and the end is an exact global magnitude cut
to the target fraction of block weights. NeuroPrune also merges redundant heads after each epoch and removes
dead neurons and heads physically; L1 keeps the shapes (unstructured zeros). Each run benchmarks itself against
the dense model at the end (`bench`), so run nothing else meanwhile. Finished runs are skipped.

    python benchmarks/neuroprune.py --dataset rotten_tomatoes --out runs/neuroprune/rt --dense runs/nxm/rt/dense
    python benchmarks/neuroprune.py --out runs/neuroprune/quick --quick          # plumbing, not results
    python benchmarks/neuroprune.py ... --sparsities 0.7 --movement 0.7 --movement-epochs 2 4  # + movement runs
    python benchmarks/neuroprune.py ... --sparsities 0.7 --mlpruning 0.7                  # + MLPruning step 1
    python benchmarks/neuroprune.py --model smollm2-135m --dataset enwiki --out runs/neuroprune/smollm2-enwiki \
        --max-train 8 --max-examples 4 --max-length 128 --batch-size 4 --dense-lr 5e-5 --dense-epochs 1 --epochs 1 \
        --sparsities 0.25 0.5 0.7 --bench-batch 1 8                       # the decoder: perplexity, ~1 h on 2 cores
    python benchmarks/neuroprune.py --model smollm2-135m --dataset xsum --out runs/neuroprune/smollm2-xsum \
        --max-train 64 --max-examples 40 --max-length 256 --batch-size 4 --dense-lr 5e-5 --dense-epochs 1 \
        --epochs 1 --sparsities 0.25 0.5 0.7 --no-bench                    # summarisation: ROUGE, ~45 min
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _suite import KD_MLPRUNING, compare, data_and_common, dense_recipe, run, seed_summary, suite_parser


def recipes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    data, common = data_and_common(args)
    out: dict[str, dict[str, Any]] = {}
    start = args.dense
    if start is None:
        start = str(Path(args.out) / "dense")
        out["dense"] = dense_recipe(args, data, common)
    train = {"epochs": args.epochs, "lr": args.lr, **common}
    bench = {"batch": args.bench_batch, "seq": 128} if args.bench else {"enabled": False}
    for s in args.sparsities:
        tag = f"{round(s * 100)}"
        for name in ("neuroprune", "l1"):
            method = {"name": name, "target_sparsity": s}
            out[f"{name}-{tag}"] = {"model": start, "data": data, "train": train, "method": method, "bench": bench}
    for s in args.movement:  # the training-time comparison: movement pruning to the same sparsity, its own epochs
        for epochs in args.movement_epochs:
            method = {"name": "movement", "sparsity": s, "pattern": "unstructured", "scope": "global"}
            recipe_train = {**train, "epochs": epochs}
            out[f"movement-{round(s * 100)}-e{epochs}"] = {"model": start, "data": data, "train": recipe_train,
                                                           "method": method, "bench": bench}  # fmt: skip
    for s in args.mlpruning:  # the mask-learning comparison: MLPruning step 1 (heads, rows) to the same kept fraction
        method = {"name": "mlpruning", "step": 1, "target": round(1.0 - s, 4), "block": 32}
        out[f"mlpruning-{round(s * 100)}"] = {"model": start, "data": data, "train": train, "method": method,
                                              "distill": KD_MLPRUNING, "bench": bench}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = suite_parser(__doc__, "epochs of every pruned run (the shared budget)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument(
        "--movement",
        type=float,
        nargs="*",
        default=[],
        help="also movement pruning (unstructured, global) to these sparsities: the training-time baseline",
    )
    ap.add_argument(
        "--mlpruning",
        type=float,
        nargs="*",
        default=[],
        help="also MLPruning step 1 (structured, KD from the dense run) to these sparsities, the suite's epochs",
    )
    ap.add_argument("--movement-epochs", type=int, nargs="+", default=[2], help="epochs of each movement run")
    ap.add_argument("--bench-batch", type=int, nargs="+", default=[1, 32], help="latency batch sizes (sequence 128)")
    ap.add_argument("--no-bench", dest="bench", action="store_false", help="no latency (another task, same shapes)")
    ap.add_argument("--quick", action="store_true", help="1,000 training examples, 1 + 1 epochs, 50%% and 90%%")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_train, args.dense_epochs, args.epochs, args.sparsities = 1000, 1, 1, [0.5, 0.9]
        args.max_examples = args.max_examples or 500
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = recipes(args)
    for name, recipe in todo.items():
        run(name, recipe, out, args.progress)
    print(seed_summary(compare(out, list(todo))))


if __name__ == "__main__":
    main()
