"""One-shot weight pruning of a pre-trained decoder, no training: magnitude vs Wanda vs SparseGPT at 50% and 2:4.

SmolLM2-135M (pre-trained, the registry package) on Wikipedia (`enwiki`) and Shakespeare (split seed 0), as
`prunekit oneshot` does it: calibration on the first `--calibration` sequences of `--seq` tokens of the training
split, layer by layer (each block measured with the blocks before it pruned); perplexity on the first
`--eval-chars` characters of the test split's documents, in blocks of `--seq`. Every variant starts from the dense
weights; `-onepass` variants measure every linear on the dense model in one forward (the ablation), `-sublayers`
variants measure and prune the linears of a block in turn (q / k / v, attention output, FFN inputs, FFN output).
Prints one Markdown table per dataset: perplexity, ratio to dense and to magnitude, calibration seconds and peak memory.

    python benchmarks/oneshot.py                                   # ~25 min per dataset on 2 cores
    python benchmarks/oneshot.py --calibration 8 --seq 128 --datasets enwiki --variants wanda-50   # plumbing
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

from prunekit.catalog import load_model
from prunekit.methods.base import create_method
from prunekit.tasks import get_task, load_data
from prunekit.tasks.base import calibration_batches

VARIANTS = ("magnitude-50", "wanda-50", "sparsegpt-50", "magnitude-2:4", "wanda-2:4", "sparsegpt-2:4")


def config(variant: str) -> dict:
    score, pattern, *rest = variant.split("-")
    section = {"score": score, "sequential": "onepass" not in rest, "sublayers": "sublayers" in rest}
    return section | ({"pattern": pattern} if ":" in pattern else {"sparsity": int(pattern) / 100})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--datasets", default="enwiki,shakespeare")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--calibration", type=int, default=128, help="calibration sequences")
    ap.add_argument("--eval-chars", type=int, default=50_000, help="test text read, from the first document on")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    task = get_task("causal-lm")
    dense, tok = load_model(args.model, task="causal-lm")
    dense.eval()
    wanted = args.variants.split(",")
    for dataset in args.datasets.split(","):
        splits, _ = load_data(dataset, task="causal-lm", seed=0)
        batches = calibration_batches(task, splits["train"], tok, args.seq, args.batch, args.calibration)
        test, chars, docs = splits["test"], 0, 0
        while docs < len(test) and chars < args.eval_chars:
            chars, docs = chars + len(test[docs]["text"]), docs + 1

        def ppl(model, test=test, docs=docs) -> float:
            return task.evaluate(model, test, tok, batch_size=args.batch, max_length=args.seq,
                                 max_examples=docs)["perplexity"]  # fmt: skip

        t = time.time()
        rows = {"dense": (ppl(dense), None, None)}
        print(f"{dataset}: dense test perplexity {rows['dense'][0]:.2f} ({time.time() - t:.0f} s)", flush=True)
        for variant in wanted:
            model = copy.deepcopy(dense)
            method = create_method("oneshot", config(variant) | {"calibration_examples": args.calibration})
            t = time.time()
            method.calibrate(model, batches())
            seconds = time.time() - t
            report = method.report()
            rows[variant] = (ppl(model), seconds, report.get("calibration_peak_mb"))
            tokens = report["calibration_tokens"]
            print(f"{dataset} {variant}: {rows[variant][0]:.2f} (calibrated and pruned in {seconds:.0f} s on "
                  f"{tokens} tokens, peak {rows[variant][2]} MB)", flush=True)  # fmt: skip
            del model
        print(f"\n{args.model} on {dataset} test ({docs} documents, {chars:,} characters, blocks of {args.seq}), no "
              f"training; calibration {args.calibration} x {args.seq} tokens of the training split\n")  # fmt: skip
        print("| pruning | test perplexity | x dense | x magnitude (same pattern) | calibrate + prune s | peak MB |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (value, seconds, peak) in rows.items():
            pattern = name.split("-")[1] if "-" in name else None
            base = rows.get(f"magnitude-{pattern}", (None,))[0] if pattern else None
            ratio = f"{value / base:.2f}" if base and name != f"magnitude-{pattern}" else ""
            secs = f"{seconds:.0f}" if seconds is not None else ""
            print(f"| {name} | {value:.2f} | {value / rows['dense'][0]:.2f} | {ratio} | {secs} | {peak or ''} |")
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
