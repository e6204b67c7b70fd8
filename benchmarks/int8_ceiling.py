"""Where the time of a 2x structured MiniLM-L6 goes at batch 32 x 128, fp32 and PyTorch dynamic int8: the
linears' share of the forward and how much faster int8 makes them, i.e. the most int8 can add on this CPU.

Half the heads and half the FFN neurons of every layer removed by weight magnitude (the time does not depend on
which units go) and compacted; per-channel dynamic int8 on every nn.Linear, as `prunekit bench --int8` does. The
profile is torch.profiler's self time per operator over two forwards.

    python benchmarks/int8_ceiling.py      # ~1 min on 2 cores; run nothing else meanwhile
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from torch.profiler import ProfilerActivity, profile

from prunekit.bench import random_inputs
from prunekit.catalog import load_model
from prunekit.compact.remove import compact
from prunekit.importance import unit_masks, unit_scores
from prunekit.topology import describe

LINEARS = ("aten::addmm", "aten::linear", "aten::mm", "quantized::linear_dynamic")


def median_ms(model: torch.nn.Module, inputs: dict, repeats: int) -> float:
    with torch.inference_mode():
        model(**inputs)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - t)
    return sorted(times)[repeats // 2] * 1e3


def profile_ms(model: torch.nn.Module, inputs: dict) -> tuple[float, float]:
    """(linears, everything) self time per forward, ms."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**inputs)
        model(**inputs)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 2e3
    linear = sum(e.self_cpu_time_total for e in events if e.key in LINEARS) / 2e3
    return linear, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense = load_model(args.model, num_labels=2)[0].eval()
    pruned = copy.deepcopy(dense)
    masks = unit_masks(describe(pruned), unit_scores(pruned, "magnitude", None), heads=0.5, neurons=0.5,
                       scope="layer", min_heads=1, min_neurons=1)  # fmt: skip
    pruned = compact(pruned, masks).eval()
    int8 = quantize_dynamic(copy.deepcopy(pruned), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    x = random_inputs(args.batch, args.seq, dense.config.vocab_size)
    times = {name: [] for name in ("dense", "pruned", "int8")}
    for _ in range(3):  # in turns: this VM's speed drifts
        for name, m in (("dense", dense), ("pruned", pruned), ("int8", int8)):
            times[name].append(median_ms(m, x, args.repeats))
    ms = {k: sorted(v)[1] for k, v in times.items()}
    (lf, tf), (lq, tq) = profile_ms(pruned, x), profile_ms(int8, x)
    print(f"batch {args.batch} x {args.seq}, {args.threads} threads, torch {torch.__version__}")
    print(f"median ms: dense {ms['dense']:.1f}, pruned fp32 {ms['pruned']:.1f} ({ms['dense'] / ms['pruned']:.2f}x), "
          f"+ int8 {ms['int8']:.1f} ({ms['dense'] / ms['int8']:.2f}x)")  # fmt: skip
    print(f"profile, pruned fp32: linears {lf:.1f} of {tf:.1f} ms ({100 * lf / tf:.0f}%), the rest {tf - lf:.1f}")
    print(f"profile, int8:        linears {lq:.1f} of {tq:.1f} ms ({100 * lq / tq:.0f}%), the rest {tq - lq:.1f}")
    print(f"int8 makes the linears {lf / lq:.2f}x faster")
    for gain in (2.0, 4.0):
        best = tf - lf + lf / gain
        print(f"if int8 made the linears {gain:.0f}x faster (AVX2 {'peak' if gain == 2 else 'with VNNI, roughly'}) and "
              f"nothing else changed: {best:.1f} ms, {ms['dense'] / ms['pruned'] * tf / best:.2f}x dense")  # fmt: skip


if __name__ == "__main__":
    main()
