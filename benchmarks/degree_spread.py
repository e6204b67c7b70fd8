"""FFN neuron degree spread of any saved runs, by the definition NeuroPrune's manifest records.

NeuroPrune reports the std of its neurons' fractional degree ((in + out edges) / possible); plain L1 and the
other methods do not, so this recomputes it for any run directory to put the two side by side. Neurons with no
edge at all are left out, as in the manifest.

    python benchmarks/degree_spread.py runs/neuroprune/rt-v2/neuroprune-70 runs/neuroprune/rt-v2/l1-70
"""

from __future__ import annotations

import argparse

import torch

from prunekit.api import load_source
from prunekit.methods.neuroprune.method import edge_counts, ffn_matrices
from prunekit.topology import describe


def degree_fractions(run_dir: str, eps: float = 0.0) -> torch.Tensor:
    model, _, _ = load_source(run_dir)
    fracs = []
    for _, inputs, output in ffn_matrices(model, describe(model)):
        n_in, n_out = edge_counts(inputs, output, eps)
        total = (n_in + n_out).float()
        fracs.append(total[total > 0] / (sum(w.shape[1] for w in inputs) + output.shape[0]))
    return torch.cat(fracs) if fracs else torch.zeros(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--eps", type=float, default=0.0, help="an edge is |w| > eps (saved runs hold exact zeros)")
    args = ap.parse_args(argv)
    print("| run | neurons with an edge | degree fraction mean | std |")
    print("|---|---:|---:|---:|")
    for run in args.runs:
        f = degree_fractions(run, args.eps)
        print(f"| {run} | {f.numel():,} | {f.mean():.4f} | {f.std(unbiased=False):.4f} |")


if __name__ == "__main__":
    main()
