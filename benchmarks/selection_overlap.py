"""Which heads and FFN neurons each prunekit criterion removes, against the ones Torch-Pruning's Taylor removes.

From one fine-tuned run directory (e.g. a `benchmarks/peers.py` dense run), on the calibration batches the peers
use (the first `--calib-batches` x `--batch-size` training examples of the run's split): Torch-Pruning 1.6.1
(`GroupTaylorImportance`, the optional extra `peers`) and every prunekit criterion asked to remove `--heads` /
`--neurons` of every layer; prints, per criterion and layer, how many of Torch-Pruning's kept heads and neurons it
keeps too. No training, no timing:

    python benchmarks/selection_overlap.py runs/peers/minilm-rt/s0/dense
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peers  # noqa: E402  (the Torch-Pruning call the peers benchmark makes)

CRITERIA = ("taylor", "taylor-elementwise", "fisher", "sensitivity", "activation", "magnitude")


def kept_by_torch_pruning(model, topo, batches, heads: float, neurons: float) -> dict[int, tuple[set, set]]:
    """The original indices of the heads and neurons Torch-Pruning keeps, found by matching rows after pruning."""
    from prunekit.topology import get_module

    before = {b.index: (get_module(model, b.attention.q).weight.detach().clone(),
                        get_module(model, b.ffn.inputs[0]).weight.detach().clone()) for b in topo.blocks}  # fmt: skip
    pruned = copy.deepcopy(model)
    peers.torch_pruning_prune(pruned, "taylor", heads, neurons, batches)
    out = {}
    for b in topo.blocks:
        q0, w0 = before[b.index]
        dh = b.attention.head_dim
        q1 = get_module(pruned, b.attention.q).weight.detach()
        w1 = get_module(pruned, b.ffn.inputs[0]).weight.detach()
        kept_heads = {
            j // dh for h in range(q1.shape[0] // dh) for j in range(q0.shape[0]) if torch.equal(q0[j], q1[h * dh])
        }
        rows = {tuple(r.tolist()): j for j, r in enumerate(w0)}
        out[b.index] = (kept_heads, {rows[tuple(r.tolist())] for r in w1})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a fine-tuned prunekit run directory (sequence classification)")
    ap.add_argument("--heads", type=float, default=0.5)
    ap.add_argument("--neurons", type=float, default=0.5)
    ap.add_argument("--calib-batches", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args(argv)

    from prunekit.importance import unit_masks, unit_scores
    from prunekit.pipelines.stages import load_splits
    from prunekit.recipe import DataSpec
    from prunekit.runs.io import load, read_manifest
    from prunekit.tasks import get_task
    from prunekit.tasks.base import calibration_batches
    from prunekit.topology import describe

    run = Path(args.run)
    spec = DataSpec(**read_manifest(run).recipe["data"])
    data, kind = load_splits(spec)
    task = get_task(kind)
    model, tok = load(run, with_tokenizer=True, block_sparse="never")
    model.config.problem_type = model.config.problem_type or "single_label_classification"
    n = args.calib_batches * args.batch_size
    batches = list(calibration_batches(task, data["train"], tok, args.max_length, args.batch_size, n)())
    topo = describe(model)
    reference = kept_by_torch_pruning(model, topo, batches, args.heads, args.neurons)
    print("| criterion | heads kept by both, per layer | neurons kept by both, per layer |")
    print("|---|---|---|")
    for criterion in CRITERIA:
        data_in = None if criterion == "magnitude" else batches
        masks = unit_masks(topo, unit_scores(model, criterion, data_in), heads=args.heads, neurons=args.neurons)
        h, w = [], []
        for i, (tp_heads, tp_neurons) in reference.items():
            ours_h = set(torch.nonzero(masks.layer(i).heads).flatten().tolist())
            ours_w = set(torch.nonzero(masks.layer(i).neurons).flatten().tolist())
            h.append(f"{len(ours_h & tp_heads)}/{len(tp_heads)}")
            w.append(f"{len(ours_w & tp_neurons)}/{len(tp_neurons)}")
        print(f"| {criterion} | {' '.join(h)} | {' '.join(w)} |", flush=True)


if __name__ == "__main__":
    main()
