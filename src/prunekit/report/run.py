"""A run directory as plain data for reports: the manifest, the metrics log, and lookups that tolerate gaps.

Runs come from different trainers and versions, so every reader here accepts missing keys, unknown keys,
an empty or absent `metrics.jsonl` and a truncated last line (a job killed mid-write) instead of failing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.runs.io import read_manifest

METRICS_LOG = "metrics.jsonl"
# keys that locate a record rather than measure something
POSITION_KEYS = frozenset({"type", "stage", "step", "epoch", "split", "global_step", "time", "timestamp", "_x"})
# summed into a run's training time when the manifest has no `train_s` (the pipeline times each stage)
TRAIN_STAGE_TIMINGS = ("finetune_s", "prune_s", "distill_s")
# tried in this order when the task does not name its main metric
PREFERRED_METRICS = (
    "accuracy",
    "f1",
    "exact_match",
    "matthews_correlation",
    "pearson",
    "spearmanr",
    "rougeL",
    "bleu",
    "perplexity",
)
_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "wer", "cer")


@dataclass
class MetricsLog:
    """Training and evaluation records of `metrics.jsonl`; `status` is "ok", "empty" or "missing"."""

    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    status: str = "missing"
    stages: list[str] = field(default_factory=list)
    boundaries: list[float] = field(default_factory=list)


@dataclass
class Run:
    """A validated run directory: `data` is the manifest as a dict, extra fields (bench, dense_structure) kept."""

    path: Path
    data: dict[str, Any]
    log: MetricsLog

    @property
    def name(self) -> str:
        return self.path.resolve().name or str(self.path)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def dig(d: Any, *keys: Any) -> Any:
    """d[k1][k2]... or None when any level is missing or of the wrong type (lists take int keys)."""
    for k in keys:
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _kind(record: dict[str, Any]) -> str:
    kind = record.get("type")
    if isinstance(kind, str):
        return kind
    if "split" in record or any(str(k).startswith("eval_") for k in record):
        return "eval"
    return "train" if "loss" in record else "other"


def _place(records: list[dict[str, Any]], log: MetricsLog) -> None:
    """Give every record an x position `_x`: its step, shifted past the earlier stages (the pipeline's
    finetune then prune stages each count steps from zero), so stages follow each other on one axis."""
    last: dict[Any, float] = {}
    for i, r in enumerate(records):
        step = r.get("step")
        last[r.get("stage")] = max(last.get(r.get("stage"), 0), step if is_number(step) else i)
    offsets, total = {}, 0.0
    for stage, end in last.items():
        offsets[stage] = total
        total += end
    log.stages = [str(s) for s in last if s is not None]
    log.boundaries = [x for x in offsets.values() if x > 0]
    for i, r in enumerate(records):
        step = r.get("step")
        r["_x"] = (step if is_number(step) else i) + offsets[r.get("stage")]


def _sort(records: list[dict[str, Any]], log: MetricsLog) -> None:
    _place(records, log)
    for record in records:
        {"train": log.train, "eval": log.evals}.get(_kind(record), log.other).append(record)
    log.status = "ok" if records else "empty"


def read_metrics_log(run_dir: str | Path) -> MetricsLog:
    """Parse `metrics.jsonl`, skipping (and counting) lines that are not JSON objects."""
    path = Path(run_dir) / METRICS_LOG
    log = MetricsLog()
    if not path.is_file():
        return log
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return log
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.skipped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            log.skipped += 1
    _sort(records, log)
    return log


def load_run(run_dir: str | Path, with_log: bool = True) -> Run:
    """Read a run directory; a missing folder or manifest raises UsageError (from `read_manifest`).

    Without a usable metrics.jsonl, the manifest's `history` (evaluation records) stands in for it."""
    manifest = read_manifest(run_dir)
    data = manifest.model_dump()
    log = read_metrics_log(run_dir) if with_log else MetricsLog()
    history = data.get("history")
    if with_log and log.status != "ok" and isinstance(history, list) and history:
        fallback = MetricsLog(skipped=log.skipped)
        _sort([dict(r) for r in history if isinstance(r, dict)], fallback)
        if fallback.status == "ok":
            fallback.status = "history"
            log = fallback
    return Run(path=Path(run_dir), data=data, log=log)


# ---------------------------------------------------------------- metrics


def lower_is_better(metric: str) -> bool:
    return any(s in metric.lower() for s in _LOWER_IS_BETTER)


def numeric_items(d: Any) -> dict[str, float]:
    return {str(k): v for k, v in d.items() if is_number(v)} if isinstance(d, dict) else {}


def split_metrics(metrics: dict[str, Any], split: str) -> dict[str, float]:
    """Numeric metrics of one split ("validation", "test") of the manifest's `metrics`."""
    return numeric_items(metrics.get(split))


def dense_metrics(metrics: dict[str, Any], split: str) -> dict[str, float]:
    """The dense model's metrics to compare with `split`: `dense` is either flat or keyed by split. A
    split-keyed dense entry without this split gives nothing, so different splits are never compared."""
    dense = metrics.get("dense")
    if not isinstance(dense, dict):
        return {}
    if any(isinstance(v, dict) for v in dense.values()):
        return numeric_items(dense.get(split))
    return numeric_items(dense)


def lookup(values: dict[str, float], metric: str, split: str = "") -> float | None:
    """A metric under its own name or a Trainer-style prefix (`eval_accuracy`, `test_accuracy`)."""
    for key in (metric, f"{split}_{metric}", f"eval_{metric}", f"test_{metric}"):
        if key in values:
            return values[key]
    return None


def main_metric(data: dict[str, Any]) -> str | None:
    """The task's `main_metric`, else the first preferred metric recorded, else the first non-loss one."""
    named = dig(data, "task", "main_metric")
    if isinstance(named, str) and named:
        return named
    metrics = data.get("metrics") or {}
    recorded: list[str] = []
    for split in ("test", "validation"):
        recorded += split_metrics(metrics, split)
        recorded += dense_metrics(metrics, split)
    bare = [k.removeprefix("eval_").removeprefix("test_") for k in recorded]
    for name in PREFERRED_METRICS:
        if name in bare:
            return name
    return next((k for k in bare if "loss" not in k and k not in ("runtime", "samples", "n")), None)


def main_result(data: dict[str, Any]) -> dict[str, Any]:
    """Main metric on test (fallback validation) with the dense value of the same split, when recorded."""
    metric = main_metric(data)
    metrics = data.get("metrics") or {}
    out: dict[str, Any] = {"metric": metric, "split": None, "value": None, "dense": None}
    if metric is None:
        return out
    for split in ("test", "validation"):
        value = lookup(split_metrics(metrics, split), metric, split)
        if value is not None:
            out.update(split=split, value=value, dense=lookup(dense_metrics(metrics, split), metric, split))
            return out
    for split in ("test", "validation"):  # no pruned result: still report the dense one
        dense = lookup(dense_metrics(metrics, split), metric, split)
        if dense is not None:
            out.update(split=split, dense=dense)
            return out
    return out


# ---------------------------------------------------------------- sparsity and bench


def kept_fraction(data: dict[str, Any]) -> float | None:
    """Kept fraction of the prunable block parameters as saved (sparsity.saved kept/params)."""
    sparsity = data.get("sparsity") or {}
    saved = sparsity.get("saved") if isinstance(sparsity.get("saved"), dict) else sparsity
    params, kept = dig(saved, "params"), dig(saved, "kept")
    if is_number(params) and is_number(kept) and params > 0:
        return kept / params
    return None


def latency_point(bench: Any, batch: int, seq_len: int | None = None) -> dict[str, Any] | None:
    """The latency entry at `batch` (and `seq_len` if given; else the longest sequence measured)."""
    points = [
        p
        for p in (dig(bench, "latency") or [])
        if isinstance(p, dict) and p.get("batch") == batch and (seq_len is None or p.get("seq_len") == seq_len)
    ]
    return max(points, key=lambda p: p.get("seq_len") or 0) if points else None


def flops_ratio(bench: Any, seq_len: int | None = None) -> tuple[float | None, int | None]:
    """(pruned/dense FLOPs per token, its seq_len) at `seq_len`, else at the longest sequence measured."""
    entries = [e for e in (dig(bench, "flops_per_token") or []) if isinstance(e, dict)]
    if seq_len is not None and any(e.get("seq_len") == seq_len for e in entries):
        entries = [e for e in entries if e.get("seq_len") == seq_len]
    if not entries:
        return None, None
    entry = max(entries, key=lambda e: e.get("seq_len") or 0)
    ratio = dig(entry, "ratio", "total")
    return (ratio if is_number(ratio) else None), entry.get("seq_len")


def train_seconds(timings: Any) -> float | None:
    """`train_s`, else the sum of the stage timings recorded (dense fine-tune, pruning)."""
    if not isinstance(timings, dict):
        return None
    if is_number(timings.get("train_s")):
        return timings["train_s"]
    stages = [timings[k] for k in TRAIN_STAGE_TIMINGS if is_number(timings.get(k))]
    return sum(stages) if stages else None


def speedup(bench: Any, batch: int) -> float | None:
    value = dig(latency_point(bench, batch), "speedup")
    return value if is_number(value) else None


# ---------------------------------------------------------------- formatting


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers for tables: ints with separators, floats with `digits` decimals (large ones shorter)."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if abs(x) >= 1000:
            return f"{x:,.1f}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_ratio(x: float | None, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.3f}{suffix}"


def fmt_seconds(s: Any) -> str:
    if not is_number(s):
        return fmt(s)
    if s < 60:
        return f"{s:.1f} s"
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def human(x: Any, unit: str = "") -> str:
    if not is_number(x):
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{suffix}{unit}"
    return f"{x:.4g}{unit}"
