"""Measured gains: parameters, FLOPs, latency and peak memory of a pruned model against its dense reference.

Counts and FLOPs are read from the current module shapes (via the topology), so a compacted model
counts less without any bookkeeping. Latency is timed in one process with the two models interleaved,
so slow drift (thermal, a neighbour's load) hits both alike. CPU peak memory is measured in a fresh
child process, because a process's RSS high-water mark cannot be lowered once another model ran in it.
"""

from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.table import Table
from torch import nn
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging as hf_logging

from prunekit.core.errors import UsageError
from prunekit.core.memory import maxrss_kb, reset_peak_rss, status_kb
from prunekit.kernels import BlockSparseLinear, block_density
from prunekit.kernels.semi_structured import nm_speedup_note, semi_structured_available
from prunekit.kernels.unstructured import SparseLinear
from prunekit.runs.io import load, save
from prunekit.runs.nm_storage import has_nm
from prunekit.topology import (
    Topology,
    describe,
    embedding_segments,
    ffn_width_key,
    get_module,
    is_decoder,
    layers_key,
    learned_positions,
    linear_shape,
    max_positions,
    position_offset,
)

if TYPE_CHECKING:
    from rich.table import Table

EMBEDDING_SEGMENTS = embedding_segments()

ModelSource = nn.Module | str | Path | Callable[[], nn.Module]


# ---------------------------------------------------------------- parameters


def _is_embedding(name: str) -> bool:
    return not EMBEDDING_SEGMENTS.isdisjoint(name.split("."))


def count_parameters(model: nn.Module, topo: Topology | None = None) -> dict[str, int | None]:
    """Parameters split into embeddings, transformer blocks and head (pooler, classifier, final norm, untied
    lm_head). Tied weights count once. `blocks_nonzero` is None on the meta device (no values to count)."""
    topo = topo or describe(model)
    prefix = topo.layers_path + "."
    counts = {"embeddings": 0, "blocks": 0, "head": 0}
    nonzero: int | None = 0
    for name, p in model.named_parameters():  # deduplicates tied parameters
        if name.startswith(prefix):
            counts["blocks"] += p.numel()
            if p.is_meta:
                nonzero = None
            elif nonzero is not None:
                nonzero += int(torch.count_nonzero(p))
        elif _is_embedding(name):
            counts["embeddings"] += p.numel()
        else:
            counts["head"] += p.numel()
    return {**counts, "total": sum(counts.values()), "blocks_nonzero": nonzero}


def analytic_parameters(config, head: str = "sequence-classification") -> dict[str, int]:
    """The same split as `count_parameters`, from a BERT-like config (BERT, RoBERTa, ELECTRA-style) by formula:
    a cross-check of the counter that needs no model. `head` is "sequence-classification" (pooler or
    RoBERTa's dense layer, then the classifier) or "base" (the pooler only, as `AutoModel` builds it)."""
    d, f, n_layers = config.hidden_size, getattr(config, ffn_width_key(config)), getattr(config, layers_key(config))
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * d + 2 * d
    attention = 4 * (d * d + d) + 2 * d  # q, k, v, o with biases; LayerNorm
    ffn = (d * f + f) + (f * d + d) + 2 * d  # W1, W2 with biases; LayerNorm
    blocks = n_layers * (attention + ffn)
    pooler = d * d + d
    if head == "base":
        head_params = pooler
    elif head == "sequence-classification":
        head_params = pooler + d * config.num_labels + config.num_labels
    else:
        raise UsageError(f"unknown head '{head}': use 'sequence-classification' or 'base'")
    return {"embeddings": embeddings, "blocks": blocks, "head": head_params, "total": embeddings + blocks + head_params}


# ---------------------------------------------------------------- FLOPs


def _head_linears(model: nn.Module, topo: Topology) -> list[tuple[str, nn.Module]]:
    prefix = topo.layers_path + "."
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | Conv1D) and not name.startswith(prefix) and not _is_embedding(name)
    ]


def _runs_per_sequence(model: nn.Module, name: str) -> bool:
    """Encoder poolers and sequence-classification heads see one token per sequence; decoder heads
    (lm_head, Llama/GPT-2 `score`) and token-level heads run on every token."""
    if is_decoder(model):
        return False
    cls = type(model).__name__
    return "pooler" in name.split(".") or cls.endswith(("ForSequenceClassification", "ForMultipleChoice"))


def flops_per_token(model: nn.Module, seq_len: int, topo: Topology | None = None) -> dict[str, float]:
    """Analytic forward FLOPs per token (2 x multiply-accumulates) at `seq_len`.

    `blocks`: the linears of every block, from their current weight shapes (a compacted model counts less;
    a ScatterLinear counts only the rows it computes, a GatherLinear only the input columns it reads).
    `attention_scores`: per query head 2*seq_len*head_dim for QK^T and as much for AV, over the full square (dense
    kernels compute it, causal or not). `head`: linears outside the blocks and embeddings, divided by seq_len where
    they run once per sequence.
    Norms, softmax, activations, biases and embedding lookups are left out (small, and not what pruning
    removes). N:M or unstructured zeros inside a weight do not reduce them, since a dense GEMM multiplies the
    zeros too; a matrix packed into the block-sparse kernel (`BlockSparseLinear`) counts only its kept blocks,
    one in the unstructured sparse kernel (`SparseLinear`) only its non-zero weights.
    """
    if seq_len <= 0:
        raise UsageError(f"seq_len must be positive, got {seq_len}")
    topo = topo or describe(model)
    blocks = scores = 0.0

    for b in topo.blocks:
        for name in b.linears():
            module = get_module(model, name)
            out_f, in_f = linear_shape(module)
            kept = 1.0
            if isinstance(module, BlockSparseLinear):
                kept = block_density(module.weight, module.block)
            elif isinstance(module, SparseLinear):
                kept = float(module.weight.detach().ne(0).float().mean())
            blocks += 2 * out_f * in_f * kept
        if b.attention is not None:
            scores += b.attention.num_heads * 2 * (2 * seq_len * b.attention.head_dim)
    head = 0.0
    for name, module in _head_linears(model, topo):
        out_f, in_f = linear_shape(module)
        head += 2 * out_f * in_f / (seq_len if _runs_per_sequence(model, name) else 1)
    return {"blocks": blocks, "attention_scores": scores, "head": head, "total": blocks + scores + head}


# ---------------------------------------------------------------- inputs and timing


def random_inputs(batch: int, seq_len: int, vocab_size: int, device: str | torch.device = "cpu", seed: int = 0):
    """Seeded random token ids and an all-ones attention mask: timing must not depend on the data."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def max_seq_len(model: nn.Module) -> int | None:
    """Longest input the model's learned position embeddings allow (None: rotary, no hard limit)."""
    if not learned_positions(model):
        return None
    limit = max_positions(model.config)
    if limit is None:
        return None
    return int(limit - position_offset(model.config))


def _check_seq_len(model: nn.Module, seq_len: int) -> None:
    limit = max_seq_len(model)
    if limit is not None and seq_len > limit:
        raise UsageError(f"seq_len {seq_len} exceeds this model's {limit} positions: choose a shorter grid")


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _forward_ms(model: nn.Module, inputs: dict, device: str | torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    model(**inputs)
    _sync(device)
    return (time.perf_counter() - start) * 1000.0


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default); works for two samples."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_ms: Sequence[float], batch: int) -> dict[str, float]:
    s = sorted(times_ms)
    median = statistics.median(s)
    return {
        "median_ms": median,
        "p10_ms": _quantile(s, 0.10),
        "p90_ms": _quantile(s, 0.90),
        "iqr_ms": _quantile(s, 0.75) - _quantile(s, 0.25),
        "throughput_seq_per_s": batch / (median / 1000.0) if median > 0 else float("inf"),
    }


@contextmanager
def _timing_mode(models: Sequence[nn.Module], threads: int | None) -> Iterator[None]:
    """Eval mode, inference mode and the thread count for the measurement; everything restored after."""
    training = [m.training for m in models]
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for m in models:
            m.eval()
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old_threads)
        for m, t in zip(models, training, strict=True):
            m.train(t)


def measure_latency(
    model: nn.Module,
    *,
    batch: int,
    seq_len: int,
    vocab_size: int,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Forward latency of one batch (the model must already be on `device`): median, p10, p90 and IQR in
    milliseconds, and throughput in sequences per second at the median."""
    if repeats < 1:
        raise UsageError(f"repeats must be at least 1, got {repeats}")
    inputs = random_inputs(batch, seq_len, vocab_size, device, seed)
    with _timing_mode([model], threads):
        for _ in range(warmup):
            _forward_ms(model, inputs, device)
        times = [_forward_ms(model, inputs, device) for _ in range(repeats)]
    return summarize(times, batch)


def interleaved_latency(
    models: dict[Any, nn.Module],
    *,
    batch: int,
    seq_len: int,
    vocab_size: int,
    warmup: int = 2,
    repeats: int = 7,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    settle: int = 0,
) -> dict[Any, float]:
    """Median forward latency (ms) of several models timed in turns, one forward each per round: a machine that
    slows down or speeds up mid-way shifts them all alike, so their differences (what a unit of structure costs)
    stay meaningful where one model after the other would not. `settle` untimed forwards precede each timed one:
    runtimes whose idle threads spin (ONNX Runtime, OpenMP) slow whatever runs right after them."""
    if repeats < 1:
        raise UsageError(f"repeats must be at least 1, got {repeats}")
    inputs = random_inputs(batch, seq_len, vocab_size, device)
    times: dict[Any, list[float]] = {k: [] for k in models}
    with _timing_mode(list(models.values()), threads):
        for _ in range(warmup):
            for m in models.values():
                _forward_ms(m, inputs, device)
        for _ in range(repeats):
            for k, m in models.items():
                for _ in range(settle):
                    _forward_ms(m, inputs, device)
                times[k].append(_forward_ms(m, inputs, device))
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------- peak memory


def _load_source(source: str | Path | Callable[[], nn.Module], device: str | torch.device = "cpu") -> nn.Module:
    if isinstance(source, str | Path):
        return load(source, device=device)
    return source().to(device)


def _cpu_peak_child(source, batch: int, seq_len: int, vocab_size: int, threads: int | None, seed: int) -> dict:
    """Runs in a fresh process: load, then one forward, with the RSS high-water mark taken around it."""
    if threads is not None:
        torch.set_num_threads(threads)
    model = _load_source(source).eval()
    inputs = random_inputs(batch, seq_len, vocab_size, "cpu", seed)
    gc.collect()
    exact = reset_peak_rss()
    before = status_kb("VmRSS") if exact else maxrss_kb()
    with torch.inference_mode():
        model(**inputs)
    peak = status_kb("VmHWM") if exact else maxrss_kb()
    return {
        "peak_mb": peak / 1024,
        "forward_mb": max(0, peak - before) / 1024,
        "weights_mb": _weights_mb(model),
        "exact": exact,  # False: ru_maxrss fallback, forward_mb only counts what exceeds the loading peak
    }


def _weights_mb(model: nn.Module) -> float:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def _save_quietly(model: nn.Module, out: Path) -> Path:
    """A run directory for the child to load, without a progress bar in the benchmark's output."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return save(model, out)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def peak_memory_mb(
    source: ModelSource,
    *,
    batch: int,
    seq_len: int,
    vocab_size: int,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Peak memory of one (cold) forward: `peak_mb` (the high-water mark during it), `forward_mb` (above what
    was in use just before: activations, workspace, first-call allocations) and `weights_mb`.

    `source` is a model, a prunekit run directory, or a picklable zero-argument function returning a model.
    On CUDA it is CUDA's allocator peak (weights + activations) in this process. On CPU it is the RSS of a
    fresh spawned child process, which includes the Python/torch runtime in `peak_mb`; an in-memory model
    is first saved to a temporary run directory for the child to load.
    """
    if torch.device(device).type == "cuda":
        model = source if isinstance(source, nn.Module) else _load_source(source, device)
        inputs = random_inputs(batch, seq_len, vocab_size, device, seed)
        with _timing_mode([model], None):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            model(**inputs)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mb": peak / 2**20, "forward_mb": (peak - before) / 2**20, "weights_mb": _weights_mb(model)}
    with tempfile.TemporaryDirectory(prefix="prunekit-mem-") as tmp:
        if isinstance(source, nn.Module):
            source = _save_quietly(source, Path(tmp) / "model")
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            return pool.submit(_cpu_peak_child, source, batch, seq_len, vocab_size, threads, seed).result()


# ---------------------------------------------------------------- dense vs pruned


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _ratios(pruned: dict, dense: dict) -> dict[str, float | None]:
    return {
        k: _ratio(v, dense.get(k))
        for k, v in pruned.items()
        if isinstance(v, int | float | None) and not isinstance(v, bool)
    }


def bench(
    model: nn.Module,
    reference: nn.Module,
    *,
    grid: Sequence[tuple[int, int]] = ((1, 128), (32, 128)),
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    memory: bool = True,
    seed: int = 0,
    patterns: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Compare a pruned model with its dense reference (both already on `device`) on a grid of
    (batch, seq_len): parameters, FLOPs per token, latency, throughput and peak memory.
    `patterns` (module -> pattern, as in a manifest) adds a note when N:M sparsity cannot run faster here.

    Ratios are pruned/dense for parameters, FLOPs and memory, and dense/pruned median latency (`speedup`).
    Latency repeats alternate between the two models (in ABBA order) so drift hits both alike.
    Peak memory is taken at the largest grid point. The result is JSON-serialisable.
    """
    if not grid:
        raise UsageError("the benchmark grid is empty: give at least one (batch, seq_len)")
    if repeats < 1:
        raise UsageError(f"repeats must be at least 1, got {repeats}")
    for _, seq_len in grid:
        _check_seq_len(model, seq_len)
        _check_seq_len(reference, seq_len)
    vocab = min(model.config.vocab_size, reference.config.vocab_size)
    dense_params, pruned_params = count_parameters(reference), count_parameters(model)
    result: dict[str, Any] = {
        "device": str(device),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch_version": torch.__version__,
        "warmup": warmup,
        "repeats": repeats,
        "params": {"dense": dense_params, "pruned": pruned_params, "ratio": _ratios(pruned_params, dense_params)},
        "flops_per_token": [],
        "latency": [],
        "memory": None,
        "notes": _notes(patterns, device, model),
    }
    for seq_len in sorted({s for _, s in grid}):
        dense, pruned = flops_per_token(reference, seq_len), flops_per_token(model, seq_len)
        result["flops_per_token"].append(
            {"seq_len": seq_len, "dense": dense, "pruned": pruned, "ratio": _ratios(pruned, dense)}
        )
    with _timing_mode([reference, model], threads):
        for batch, seq_len in grid:
            inputs = random_inputs(batch, seq_len, vocab, device, seed)
            for _ in range(warmup):
                _forward_ms(reference, inputs, device)
                _forward_ms(model, inputs, device)
            times: dict[str, list[float]] = {"dense": [], "pruned": []}
            for r in range(repeats):
                order = ("dense", "pruned") if r % 2 == 0 else ("pruned", "dense")
                for which in order:
                    times[which].append(_forward_ms(reference if which == "dense" else model, inputs, device))
            dense_lat, pruned_lat = summarize(times["dense"], batch), summarize(times["pruned"], batch)
            result["latency"].append(
                {
                    "batch": batch,
                    "seq_len": seq_len,
                    "dense": dense_lat,
                    "pruned": pruned_lat,
                    "speedup": _ratio(dense_lat["median_ms"], pruned_lat["median_ms"]),
                    "throughput_ratio": _ratio(pruned_lat["throughput_seq_per_s"], dense_lat["throughput_seq_per_s"]),
                }
            )
    if memory:
        batch, seq_len = max(grid, key=lambda g: g[0] * g[1])
        kw = dict(batch=batch, seq_len=seq_len, vocab_size=vocab, threads=threads, device=device, seed=seed)
        dense_mem, pruned_mem = peak_memory_mb(reference, **kw), peak_memory_mb(model, **kw)
        result["memory"] = {
            "batch": batch,
            "seq_len": seq_len,
            "dense": dense_mem,
            "pruned": pruned_mem,
            "ratio": _ratios(pruned_mem, dense_mem),
        }
    return result


def _notes(patterns: dict[str, str] | None, device: str | torch.device, model: nn.Module | None = None) -> list[str]:
    """What a reader of the numbers must know: N:M zeros are multiplied like any weight on most devices; how many
    unstructured matrices run in the sparse kernel."""
    notes = [nm_speedup_note(device)] if has_nm(patterns) and not semi_structured_available(device) else []
    unstructured = [n for n, t in (patterns or {}).items() if t == "unstructured"]
    if model is not None and unstructured:
        sparse = {n for n, m in model.named_modules() if isinstance(m, SparseLinear)}
        notes.append(f"unstructured sparse kernel: {len(sparse & set(unstructured))} of {len(unstructured)} "
                     "matrices packed (the others timed no faster than dense here)")  # fmt: skip
    return notes


# ---------------------------------------------------------------- report


def _human(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{suffix}{unit}"
    return f"{x:.4g}{unit}"


def _r(x: float | None, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.3f}{suffix}"


def format_bench(result: dict[str, Any]) -> Table:
    """A rich Table of a `bench` result: metric, dense, pruned, ratio (pruned/dense, except speedup)."""
    notes = result.get("notes") or []
    table = Table(title=f"prunekit bench ({result['device']}, {result['threads']} threads)",
                  caption="\n".join(notes) or None)  # fmt: skip
    for col in ("metric", "dense", "pruned", "ratio"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    p = result["params"]
    for key in ("total", "blocks", "embeddings", "head"):
        table.add_row(f"parameters ({key})", _human(p["dense"][key]), _human(p["pruned"][key]), _r(p["ratio"][key]))
    for f in result["flops_per_token"]:
        table.add_row(
            f"FLOPs/token (seq {f['seq_len']})",
            _human(f["dense"]["total"]),
            _human(f["pruned"]["total"]),
            _r(f["ratio"]["total"]),
        )
    for lat in result["latency"]:
        point = f"b={lat['batch']} s={lat['seq_len']}"
        d, q = lat["dense"], lat["pruned"]
        table.add_row(
            f"latency ms, median ± IQR/2 ({point})",
            f"{d['median_ms']:.2f} ± {d['iqr_ms'] / 2:.2f}",
            f"{q['median_ms']:.2f} ± {q['iqr_ms'] / 2:.2f}",
            _r(lat["speedup"], "x speedup"),
        )
        table.add_row(
            f"throughput seq/s ({point})",
            f"{d['throughput_seq_per_s']:.1f}",
            f"{q['throughput_seq_per_s']:.1f}",
            _r(lat["throughput_ratio"]),
        )
    mem = result.get("memory")
    if mem:
        point = f"b={mem['batch']} s={mem['seq_len']}"
        for key, label in (("peak_mb", "peak memory MB"), ("forward_mb", "forward memory MB")):
            table.add_row(
                f"{label} ({point})", f"{mem['dense'][key]:.1f}", f"{mem['pruned'][key]:.1f}", _r(mem["ratio"][key])
            )
    return table
