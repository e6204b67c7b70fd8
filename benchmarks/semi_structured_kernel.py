"""2:4 sparse tensor cores vs the dense GEMM for every linear shape of MiniLM-L6 and MPNet-base (NxMTransformer).

One `F.linear` per shape at 32 x 128 = 4,096 tokens (batch 32, sequence 128), fp16 by default, dense against
`torch.sparse.to_sparse_semi_structured` of a random 2:4 weight of the same shape (speed does not depend on
the values); medians of CUDA-event timings. Needs a CUDA GPU of compute capability 8.0+; elsewhere it says so
and exits 2, as the bench does ("N:M sparsity gives no speedup on this device").

    python benchmarks/semi_structured_kernel.py [--tokens 4096] [--dtype fp16|bf16] [--repeats 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from prunekit.kernels.semi_structured import NO_SPEEDUP, benchmark_semi_structured, semi_structured_available

SHAPES = {  # (out, in): q/k/v/o, FFN in, FFN out
    "MiniLM-L6": [(384, 384), (1536, 384), (384, 1536)],
    "MPNet-base": [(768, 768), (3072, 768), (768, 3072)],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=32 * 128)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not semi_structured_available("cuda"):
        print(f"error: {NO_SPEEDUP}", file=sys.stderr)
        sys.exit(2)
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    rows = []
    for model, shapes in SHAPES.items():
        layers = nn.ModuleDict({f"l{i}": nn.Linear(i_f, o_f) for i, (o_f, i_f) in enumerate(shapes)}).cuda()
        patterns = {name: "2:4" for name in layers}
        for row in benchmark_semi_structured(layers, patterns, args.tokens, dtype, args.repeats):
            rows.append({"model": model, **row})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.tokens} tokens, {args.dtype}")
    print(f"{'model':10} {'out x in':>10} {'dense ms':>9} {'2:4 ms':>8} {'speedup':>8}")
    for r in rows:
        sparse = "-" if r["sparse_ms"] is None else f"{r['sparse_ms']:.3f}"
        speed = r.get("error", "-") if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"{r['model']:10} {r['shape'][0]:>4}x{r['shape'][1]:<5} {r['dense_ms']:>9.3f} {sparse:>8} {speed:>8}")


if __name__ == "__main__":
    main()
