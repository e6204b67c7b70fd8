"""prunekit's CPU block-sparse kernel against the dense GEMM, per matrix shape, block size and block density.

Shapes (out x in) are MiniLM's (hidden 384, FFN 1536) and MPNet's (768, 3072) attention and FFN matrices;
x is (tokens, in) with tokens = 32 x 128, fp32. A weight keeps exactly round(density * blocks) random B x B
blocks. Both CPU kernels are timed (`gather`: one GEMM per block-row on gathered inputs; `runs`: strided GEMMs
per run of adjacent blocks), each interleaved with the dense F.linear; `speedup` = dense ms / kernel ms of the
faster one (medians), which is what `pack_block_sparse` would pick; above 1 the kernel beats dense.
`--torch-bsr` adds PyTorch's own CPU BSR matmul for comparison.

    python benchmarks/block_sparse_kernel.py [--threads 2] [--tokens 4096] [--repeats 5] [--torch-bsr] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from prunekit.kernels import BlockSparseLinear, block_density
from prunekit.kernels.block_sparse import _time_pair

SHAPES = {
    "MiniLM": [(384, 384), (1536, 384), (384, 1536)],
    "MPNet": [(768, 768), (3072, 768), (768, 3072)],
}


def block_sparse_linear_module(out_f: int, in_f: int, block: int, density: float, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    rows, cols = out_f // block, in_f // block
    keep = torch.zeros(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=g)[: round(density * rows * cols)]] = True
    mask = keep.view(rows, cols).repeat_interleave(block, 0).repeat_interleave(block, 1)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.02 * mask)
    return lin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32 * 128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    ap.add_argument("--blocks", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--torch-bsr", action="store_true", help="also time PyTorch's CPU BSR matmul")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    header = (f"{'model':7} {'out x in':>10} {'B':>3} {'density':>7} {'dense ms':>9} {'gather ms':>9} {'runs ms':>8}"
              f" {'speedup':>8}")  # fmt: skip
    if args.torch_bsr:
        header += f" {'torch BSR':>9}"
    if not args.json:
        print(f"torch {torch.__version__}, {args.threads} threads, {args.tokens} tokens, fp32")
        print(header)
    for model, shapes in SHAPES.items():
        for out_f, in_f in shapes:
            x = torch.randn(args.tokens, in_f)
            for block in args.blocks:
                for density in args.densities:
                    lin = block_sparse_linear_module(out_f, in_f, block, density)
                    row = {"model": model, "shape": f"{out_f}x{in_f}", "block": block,
                           "density": round(block_density(lin.weight, block), 4)}  # fmt: skip
                    dense = []
                    with torch.inference_mode():
                        for kernel in ("gather", "runs"):
                            d_ms, k_ms = _time_pair(lin, BlockSparseLinear(lin, block, kernel), x, args.repeats,
                                                    args.warmup)  # fmt: skip
                            dense.append(d_ms)
                            row[f"{kernel}_ms"] = round(k_ms, 2)
                        row["dense_ms"] = round(sum(dense) / 2, 2)
                        best = min(row["gather_ms"], row["runs_ms"])
                        row["speedup"] = round(row["dense_ms"] / best, 3)
                        row["best"] = "gather" if row["gather_ms"] <= row["runs_ms"] else "runs"
                        if args.torch_bsr:
                            bsr = lin.weight.detach().to_sparse_bsr((block, block))
                            d_ms, bsr_ms = _time_pair(lin, lambda t, w=bsr: (w @ t.t()).t(), x, args.repeats, 1)
                            row["torch_bsr_speedup"] = round(d_ms / bsr_ms, 3)
                    rows.append(row)
                    if not args.json:
                        line = (f"{model:7} {row['shape']:>10} {block:>3} {row['density']:>7.0%} "
                                f"{row['dense_ms']:>9.2f} {row['gather_ms']:>9.2f} {row['runs_ms']:>8.2f} "
                                f"{row['speedup']:>7.2f}x")  # fmt: skip
                        if args.torch_bsr:
                            line += f" {row['torch_bsr_speedup']:>8.2f}x"
                        print(line, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
