"""MLPruning suite: step 1 (heads and rows) and step 2 (blocks) beside gradual magnitude and movement pruning at
the same kept fraction of block weights and the same epoch budget, from one dense run.

- `mlpruning-1`: step 1 to `--tau1` of the block weights, KD (logits, hidden states, attention) from the dense run;
- `mlpruning-2`: both steps in one run (`step: both`; its step 1 is `mlpruning-1` again, the seeds being the
  same): after step 1, B x B blocks pruned until `--overall` of the dense block weights remain, KD from the step-1
  model, block-sparse kernels where timed faster; benchmarked against the dense model like every other run;
- baselines keeping the fraction each MLPruning step measurably kept, for `--epochs` after step 1 and twice that
  after step 2 (the budget steps 1 + 2 had):
  `magnitude-hn` / `movement-hn` prune heads and FFN neurons to the same fraction (structured: they speed up),
  `magnitude-u` unstructured global magnitude (the accuracy reference: no speedup on a CPU).
Every run benchmarks itself against the dense model at the end (batch 1 and 32, sequence 128), so run nothing else
meanwhile. Finished runs are skipped and interrupted ones resumed; the table at the end is `prunekit compare`.

    python benchmarks/mlpruning.py --dataset rotten_tomatoes --out runs/mlpruning/rt --dense runs/nxm/rt/dense
    python benchmarks/mlpruning.py --out runs/mlpruning/quick --quick          # plumbing, not results
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _suite import KD_MLPRUNING, compare, data_and_common, dense_recipe, prunekit, run, seed_summary, suite_parser


def kept_block_fraction(run_dir: Path) -> float:
    """Non-zero block weights of a finished run over the dense model's, from its own benchmark."""
    from prunekit.io import read_manifest

    return float(read_manifest(run_dir).bench["params"]["ratio"]["blocks_nonzero"])


def baselines(start: str, data: dict, train: dict, kept: float, epochs: int, tag: str) -> dict[str, dict[str, Any]]:
    s = round(1.0 - kept, 4)
    recipe = {"model": start, "data": data, "train": {**train, "epochs": epochs}}
    structured = {"pattern": ["head", "neuron"], "sparsity": s, "scope": "layer"}
    return {
        f"magnitude-hn-{tag}": recipe | {"method": {"name": "magnitude", **structured}},
        f"movement-hn-{tag}": recipe | {"method": {"name": "movement", **structured}},
        f"magnitude-u-{tag}": recipe
        | {"method": {"name": "magnitude", "pattern": "unstructured", "sparsity": s, "scope": "global"}},  # fmt: skip
    }


def main(argv: list[str] | None = None) -> None:
    ap = suite_parser(__doc__, "epochs of each MLPruning step (the baselines get the same)")
    ap.add_argument("--tau1", type=float, default=0.5, help="kept fraction of block weights after step 1")
    ap.add_argument("--overall", type=float, default=0.2, help="kept fraction of the dense block weights after step 2")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="1,000 training examples, 1 epoch per step")
    ap.add_argument("--rebench", action="store_true", help="re-measure every run's latency at the end, in turn")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_train, args.dense_epochs, args.epochs = 1000, 1, 1
        args.max_examples = args.max_examples or 500
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, common = data_and_common(args)
    start = args.dense
    if start is None:
        start = str(out / "dense")
        run("dense", dense_recipe(args, data, common), out, args.progress)
    train = {"epochs": args.epochs, "lr": args.lr, **common}
    method = {"name": "mlpruning", "block": args.block}
    step1 = {"model": start, "data": data, "train": train, "distill": KD_MLPRUNING,
             "method": method | {"step": 1, "target": args.tau1}}  # fmt: skip
    run("mlpruning-1", step1, out, args.progress)
    kept1 = kept_block_fraction(out / "mlpruning-1")
    block_target = min(1.0, args.overall / kept1)  # of what step 1 left, so that `overall` of the dense remains
    steps = {"step": "both", "target": args.tau1, "block_target": round(block_target, 4)}
    both = {"model": start, "data": data, "train": train, "distill": KD_MLPRUNING, "method": method | steps}
    run("mlpruning-2", both, out, args.progress)
    kept2 = kept_block_fraction(out / "mlpruning-2")
    # the baselines keep what MLPruning measurably kept (its regulariser stops near, not at, its targets)
    tag1, tag2 = f"{round(args.tau1 * 100)}", f"{round(args.overall * 100)}"
    todo = {**baselines(start, data, train, kept1, args.epochs, tag1),
            **baselines(start, data, train, kept2, 2 * args.epochs, tag2)}  # fmt: skip
    for name, recipe in todo.items():
        run(name, recipe, out, args.progress)
    print(
        f"MLPruning kept {kept1:.3f} of the dense block weights after step 1 (target {args.tau1}), {kept2:.3f} "
        f"after step 2 (target {args.overall}; block target {block_target:.3f} of step 1's)"
    )
    names = ["mlpruning-1", "mlpruning-2", *todo]
    print(seed_summary(compare(out, names)))
    if args.rebench:
        print(rebench(out, names))


def rebench(out: Path, names: list[str]) -> str:
    """Every run's latency again, one after another on a quiet machine (`prunekit bench`: a block-pruned run is
    loaded back into the block-sparse kernel where it is timed faster), as one markdown table."""
    from prunekit.io import read_manifest

    lines = ["| run | test | block params kept | non-zero block weights | FLOPs | speedup b1 | speedup b32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in names:
        run_dir = out / name
        b = json.loads(prunekit("bench", str(run_dir), "--batch", "1", "--batch", "32", "--seq", "128", "--json",
                                capture=True))  # fmt: skip
        m = read_manifest(run_dir)
        key = (m.task or {}).get("main_metric", "accuracy")
        ratio = b["params"]["ratio"]
        speed = {r["batch"]: r["speedup"] for r in b["latency"]}
        flops = b["flops_per_token"][0]["ratio"]["total"]
        cells = [name, f"{m.metrics['test'][key]:.4f}", f"{ratio['blocks']:.1%}", f"{ratio['blocks_nonzero']:.1%}",
                 f"{flops:.2f}", f"{speed[1]:.2f}x", f"{speed[32]:.2f}x"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
