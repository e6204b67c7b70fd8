"""One-shot weight pruning of a pre-trained decoder, no training: magnitude vs Wanda vs SparseGPT at 50% and 2:4.

SmolLM2-135M (pre-trained, the registry package) on Wikipedia (`enwiki`, split seed 0): calibration on the first
`--calib-blocks` blocks of `--seq` tokens of the training split, perplexity on every token of the first
`--eval-docs` test articles, in blocks of `--seq`. One process: the activations are measured once on the dense
model (Wanda's feature norms and SparseGPT's X^T X for every block linear, the same calls the `oneshot` method
makes), then every variant starts from the dense weights. Prints one Markdown table with the ratio to dense and
to magnitude.

    python benchmarks/oneshot.py                       # ~10 min on 2 cores
    python benchmarks/oneshot.py --calib-blocks 4 --eval-docs 1 --variants wanda-50   # plumbing
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from prunekit.catalog import load_model
from prunekit.importance.sparsegpt import input_hessians, sparsegpt_prune
from prunekit.importance.wanda import input_norms, wanda_masks, wanda_scores
from prunekit.tasks import get_task, load_data
from prunekit.tasks.base import PadCollator, pad_id
from prunekit.topology import describe, get_module, weight_view

VARIANTS = ("magnitude-50", "wanda-50", "sparsegpt-50", "magnitude-2:4", "wanda-2:4", "sparsegpt-2:4")


def prune(model, names, score: str, pattern: str, norms, hessians, block: int, damp: float) -> None:
    nm = (2, 4) if pattern == "2:4" else None
    sparsity = None if nm else 0.5
    with torch.no_grad():
        if score == "sparsegpt":
            for n in names:
                view = weight_view(get_module(model, n))
                pruned, _ = sparsegpt_prune(view, hessians[n], sparsity=sparsity, nm=nm, block=block, damp=damp)
                view.copy_(pruned)
            return
        feature = norms if score == "wanda" else {n: torch.ones_like(v) for n, v in norms.items()}
        for n, keep in wanda_masks(wanda_scores(model, feature), sparsity, nm).items():
            weight_view(get_module(model, n)).mul_(keep.to(torch.float32))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="enwiki")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--calib-blocks", type=int, default=64)
    ap.add_argument("--eval-docs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=128, help="SparseGPT's column block")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    start = time.time()
    task = get_task("causal-lm")
    splits, _ = load_data(args.dataset, task="causal-lm", seed=0)
    dense, tok = load_model(args.model, task="causal-lm")
    dense.eval()
    names = describe(dense).prunable_linears()
    blocks = task.blocks(splits["train"]["text"][:16], tok, args.seq)[: args.calib_blocks]
    collate = PadCollator(pad_id(tok))
    batches = [
        {k: v for k, v in collate([{"input_ids": b, "attention_mask": [1] * len(b)} for b in blocks[i : i + 4]]).items()
         if k in ("input_ids", "attention_mask")}
        for i in range(0, len(blocks), 4)
    ]  # fmt: skip
    norms, tokens = input_norms(dense, names, batches)
    wanted = args.variants.split(",")
    hessians = input_hessians(dense, names, batches)[0] if any(v.startswith("sparsegpt") for v in wanted) else {}
    test = splits["test"]

    def ppl(model) -> float:
        return task.evaluate(model, test, tok, batch_size=args.batch, max_length=args.seq,
                             max_examples=args.eval_docs)["perplexity"]  # fmt: skip

    rows = {"dense": ppl(dense)}
    print(f"calibration: {tokens} tokens ({len(blocks)} blocks of {args.seq}); dense test perplexity "
          f"{rows['dense']:.2f} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip
    for variant in wanted:
        score, pattern = variant.split("-")
        model = copy.deepcopy(dense)
        t = time.time()
        prune(model, names, score, pattern, norms, hessians, args.block, args.damp)
        rows[variant] = ppl(model)
        print(f"{variant}: {rows[variant]:.2f} (pruned in {time.time() - t:.0f} s)", flush=True)
    print(f"\n{args.model} on {args.dataset} test ({args.eval_docs} articles, blocks of {args.seq}), no training; "
          f"calibration {tokens} tokens of the training split\n")  # fmt: skip
    print("| pruning | test perplexity | x dense | x magnitude (same pattern) |")
    print("|---|---:|---:|---:|")
    print(f"| dense | {rows['dense']:.2f} | 1.00 | |")
    for variant in wanted:
        pattern = variant.split("-")[1]
        base = rows.get(f"magnitude-{pattern}")
        ratio = f"{rows[variant] / base:.2f}" if base else ""
        print(f"| {variant} | {rows[variant]:.2f} | {rows[variant] / rows['dense']:.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
