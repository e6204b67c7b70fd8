"""The unstructured sparse kernel against the dense GEMM, per matrix shape and sparsity, and on a whole model.

Per shape of MiniLM-L6 (hidden 384, FFN 1536) and MPNet-base (768, 3072), at 70 / 80 / 90 / 95% of the weights
zero (uniformly at random: the kernel's cost follows the count of kept weights, not where they are), at batch 1
and 32 x 128 tokens: the median time of the dense F.linear, of prunekit's compiled kernel at its best tile, and
of PyTorch's CSR matmul, each timed in turns with the dense one (kernels.block_sparse._time_pair), the speedup
of the faster sparse one and the largest difference from the dense product. Then (`--model`, default on) the
whole MiniLM-L6 with every block linear magnitude-pruned to each sparsity, packed by `pack_sparse` (each matrix
in the sparse kernel only where timed faster) and timed beside the dense model at batch 1 and 32 x 128; the
packed model's logits are checked against the dense-with-zeros model.

    python benchmarks/sparse_kernel.py            # ~10 min on 2 cores; run nothing else meanwhile
    python benchmarks/sparse_kernel.py --quick    # two shapes, 90% only (plumbing)
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys

import torch
import torch.nn.functional as F

from prunekit.bench import interleaved_latency
from prunekit.catalog import load_model
from prunekit.kernels import unstructured as us
from prunekit.kernels.block_sparse import _time_pair
from prunekit.topology import describe, get_module

SHAPES = {  # (out, in) of the block linears
    "MiniLM q/k/v/o 384x384": (384, 384),
    "MiniLM FFN in 1536x384": (1536, 384),
    "MiniLM FFN out 384x1536": (384, 1536),
    "MPNet q/k/v/o 768x768": (768, 768),
    "MPNet FFN in 3072x768": (3072, 768),
    "MPNet FFN out 768x3072": (768, 3072),
}


def matrix_rows(shapes: dict, sparsities: list[float], batches: list[int], seq: int, repeats: int) -> list[str]:
    rows = []
    for label, (out_f, in_f) in shapes.items():
        for sparsity in sparsities:
            g = torch.Generator().manual_seed(0)
            w = torch.randn(out_f, in_f, generator=g)
            w[torch.rand(out_f, in_f, generator=g) < sparsity] = 0
            b = torch.randn(out_f, generator=g)
            dense = torch.nn.Linear(in_f, out_f)
            with torch.no_grad():
                dense.weight.copy_(w)
                dense.bias.copy_(b)
            for batch in batches:
                x = torch.randn(batch * seq, in_f, generator=g)
                times, errors = {}, []
                dense_ms = None
                with torch.inference_mode():
                    ref = F.linear(x, w, b)
                    for backend, tile in us.candidates():
                        sparse = us.SparseLinear(dense, backend, tile)
                        d, s = _time_pair(dense, sparse, x, repeats, 2)
                        dense_ms = d if dense_ms is None else min(dense_ms, d)
                        times[(backend, tile)] = s
                        errors.append(float((sparse(x) - ref).abs().max()))
                spmm = {k: v for k, v in times.items() if k[0] == "spmm"}
                best_spmm = min(spmm.items(), key=lambda kv: kv[1]) if spmm else None
                csr = times[("torch-csr", us.TILES[0])]
                fastest = min(times.values())
                rows.append(
                    f"| {label} | {sparsity:.0%} | {batch} | {dense_ms:.2f} | "
                    + (f"{best_spmm[1]:.2f} (tile {best_spmm[0][1]})" if best_spmm else "-")
                    + f" | {csr:.2f} | **{dense_ms / fastest:.2f}x** | {max(errors):.1e} |"
                )
                print(rows[-1], flush=True)
    return rows


def model_rows(sparsities: list[float], batches: list[int], seq: int, repeats: int) -> list[str]:
    dense, _ = load_model("minilm-l6", task="sequence-classification", num_labels=2)
    dense.eval()
    rows = []
    for sparsity in sparsities:
        model = copy.deepcopy(dense)
        names = describe(model).prunable_linears()
        with torch.no_grad():
            for name in names:
                w = get_module(model, name).weight
                threshold = w.abs().flatten().kthvalue(int(w.numel() * sparsity)).values
                w[w.abs() <= threshold] = 0
        reference = copy.deepcopy(model)
        report = us.pack_sparse(model, tokens=max(batches) * seq)
        inputs = {"input_ids": torch.randint(0, 30000, (4, 37)), "attention_mask": torch.ones(4, 37, dtype=torch.long)}
        with torch.inference_mode():
            diff = float((model(**inputs).logits - reference(**inputs).logits).abs().max())
        cells = []
        for batch in batches:
            ms = interleaved_latency({"dense": dense, "sparse": model}, batch=batch, seq_len=seq,
                                     vocab_size=dense.config.vocab_size, warmup=2, repeats=repeats)  # fmt: skip
            cells.append(f"{ms['dense']:.1f} / {ms['sparse']:.1f} = **{ms['dense'] / ms['sparse']:.2f}x**")
        packed = f"{report['packed']} of {len(names)}"
        rows.append(f"| {sparsity:.0%} | {packed} | " + " | ".join(cells) + f" | {diff:.1e} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", default="0.7,0.8,0.9,0.95")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-model", action="store_true", help="matrices only")
    ap.add_argument("--quick", action="store_true", help="two shapes at 90%%, no model (plumbing)")
    args = ap.parse_args(argv)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    shapes = SHAPES
    if args.quick:
        shapes, sparsities, args.no_model = dict(list(SHAPES.items())[:2]), [0.9], True
    threads = torch.get_num_threads()
    kernel = "compiled" if us.compiled() is not None else f"not available ({us.compile_error()})"
    print(f"{platform.machine()} {platform.processor() or ''}, {threads} threads, torch {torch.__version__}; "
          f"prunekit spmm kernel: {kernel}\n")  # fmt: skip
    print("| matrix | zeros | batch (x128) | dense ms | prunekit spmm ms | PyTorch CSR ms | speedup | max diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    matrix_rows(shapes, sparsities, batches, args.seq, args.repeats)
    if not args.no_model:
        print("\nMiniLM-L6, every block linear magnitude-pruned, packed where timed faster (dense / sparse ms):\n")
        head = " | ".join(f"batch {b} x {args.seq}" for b in batches)
        print(f"| zeros | matrices packed | {head} | max logit diff |")
        print("|---:|---:|" + "---:|" * len(batches) + "---:|")
        model_rows(sparsities, batches, args.seq, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
