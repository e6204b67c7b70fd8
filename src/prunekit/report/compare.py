"""Side-by-side comparison of run directories: one row per run, a Markdown table and an accuracy-vs-speedup
plot, so methods are compared on measured numbers from their own manifests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from prunekit.core.errors import UsageError
from prunekit.methods.base import is_baseline
from prunekit.report.markdown import table
from prunekit.report.plots import plot_tradeoff
from prunekit.report.run import (
    dig,
    flops_ratio,
    fmt,
    fmt_ratio,
    fmt_seconds,
    is_number,
    kept_fraction,
    latency_point,
    load_run,
    lower_is_better,
    main_result,
    train_seconds,
)

if TYPE_CHECKING:
    from rich.table import Table

COMPARISON = "comparison.md"
TRADEOFF_PLOT = "accuracy_vs_speedup.png"


def _speedup_at(bench: Any, batch: int) -> tuple[float | None, int | None]:
    point = latency_point(bench, batch)
    value = dig(point, "speedup")
    return (value if is_number(value) else None), dig(point, "seq_len")


BIG_BATCH = 32  # the throughput batch a comparison reads when its runs share no larger measured batch


def measured_batches(bench: Any) -> set[int]:
    """The batch sizes a run's latency was measured at."""
    return {
        p["batch"] for p in (dig(bench, "latency") or []) if isinstance(p, dict) and isinstance(p.get("batch"), int)
    }


def common_batch(benches: Sequence[Any]) -> int:
    """The throughput batch to compare runs at: the largest batch above 1 that every run with latency measured
    (a decoder suite benches at 8, an encoder one at 32), else BIG_BATCH."""
    sets = [b - {1} for b in map(measured_batches, benches) if b - {1}]
    shared = set.intersection(*sets) if sets else set()
    return max(shared) if shared else BIG_BATCH


def run_row(run_dir: str | Path, batch: int = BIG_BATCH) -> dict[str, Any]:
    """The comparison row of one run directory (UsageError when it is not one); `speedup` is at `batch`."""
    return _row(load_run(run_dir, with_log=False), run_dir, batch)


def _rows_batch(rows: list[dict[str, Any]]) -> int:
    """The batch a comparison's rows read their speedup at (all rows share it)."""
    return rows[0]["batch"] if rows else BIG_BATCH


def _row(run, run_dir: str | Path, batch: int) -> dict[str, Any]:
    d = run.data
    bench = d.get("bench")
    res = main_result(d)
    if d.get("method") == "dense":  # its "dense" metrics are the model before fine-tuning, not the reference
        res["dense"] = None
    s1, _ = _speedup_at(bench, 1)
    big, big_seq = _speedup_at(bench, batch)
    flops, flops_seq = flops_ratio(bench, big_seq)  # the FLOPs ratio at the sequence length the speedup used
    return {
        "name": run.name,
        "run_dir": str(run_dir),
        "method": d.get("method"),
        "source_model": d.get("source_model"),
        "metric": res["metric"],
        "split": res["split"],
        "value": res["value"],
        "dense_value": res["dense"],
        "delta": res["value"] - res["dense"] if res["value"] is not None and res["dense"] is not None else None,
        "kept_fraction": kept_fraction(d),
        "flops_ratio": flops,
        "flops_seq_len": flops_seq,
        "speedup_b1": s1,
        "speedup": big,
        "batch": batch,
        "device": dig(bench, "device"),
        "train_s": train_seconds(d.get("timings")),
    }


def _unique_names(rows: list[dict[str, Any]]) -> None:
    """Folder names clash for runs/a/out and runs/b/out: add parent folders until names differ."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["name"]] = counts.get(r["name"], 0) + 1
    for r in rows:
        if counts[r["name"]] > 1:
            parts = Path(r["run_dir"]).resolve().parts
            r["name"] = "/".join(parts[-2:])


def _plot_x(row: dict[str, Any]) -> tuple[float | None, bool]:
    """(x, estimated): measured speedup at the comparison's batch, else 1/FLOPs ratio (an estimate, flagged)."""
    if row["speedup"] is not None:
        return row["speedup"], False
    if row["flops_ratio"]:
        return 1.0 / row["flops_ratio"], True
    return None, False


def _dense_points(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """One dense point per distinct (source model, metric, value) the runs record."""
    seen: dict[tuple, tuple[str, float]] = {}
    for r in rows:
        if r["dense_value"] is not None:
            key = (r["source_model"], r["metric"], r["dense_value"])
            seen.setdefault(key, ("dense", r["dense_value"]))
    points = list(seen.items())
    if len(points) > 1:  # several references: say which is which
        return [(f"dense {k[0] or ''} {k[1]}".replace("  ", " ").strip(), v[1]) for k, v in points]
    return [v for _, v in points]


def _plot_points(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the trade-off plot shows: run points, dense points, the y label, and notes on what is missing
    or estimated (returned by `compare` even without an output folder)."""
    notes, points = [], []
    metrics = {r["metric"] for r in rows if r["value"] is not None}
    for r in rows:
        x, estimated = _plot_x(r)
        if x is None or r["value"] is None:
            notes.append(f"{r['name']} is not plotted: it records no {'speedup or FLOPs' if x is None else 'metric'}.")
            continue
        label = r["name"] if len(metrics) == 1 else f"{r['name']} ({r['metric']})"
        points.append({"x": x, "y": r["value"], "label": label, "estimated": estimated})
        if estimated:
            notes.append(f"{r['name']}: no latency at batch {r['batch']}, so its x is 1 / FLOPs ratio (an estimate).")
    if len(metrics) > 1:
        notes.append(f"The runs' main metrics differ ({', '.join(sorted(metrics))}): the plot mixes them.")
    return {
        "points": points,
        "dense": _dense_points([r for r in rows if r["metric"] in metrics]),
        "ylabel": next(iter(metrics)) if len(metrics) == 1 else "main metric",
        "notes": notes,
    }


def columns(batch: int) -> list[str]:
    return ["run", "method", "metric", "value", "Δ dense", "kept", "FLOPs", "speedup b1", f"speedup b{batch}", "train"]


def _cells(r: dict[str, Any]) -> list[str]:
    """A row as display strings, shared by the Markdown and the terminal table."""
    return [
        r["name"],
        r["method"] or "-",
        f"{r['metric']} ({r['split']})" if r["split"] else (r["metric"] or "-"),
        fmt(r["value"]),
        f"{r['delta']:+.4f}" if r["delta"] is not None else "-",
        fmt_ratio(r["kept_fraction"]),
        fmt_ratio(r["flops_ratio"]),
        fmt_ratio(r["speedup_b1"], "x"),
        fmt_ratio(r["speedup"], "x"),
        fmt_seconds(r["train_s"]),
    ]


def best_at(rows: list[dict[str, Any]], at: float) -> dict[str, Any]:
    """The best method and the best baseline among the runs measured at least `at` x faster than dense at the
    rows' batch (by main metric, lower first for losses), and how far apart they are; None where no run
    qualifies."""
    fast = [r for r in rows if r["speedup"] is not None and r["speedup"] >= at and r["value"] is not None]
    metrics = {r["metric"] for r in fast}
    if len(metrics) > 1:
        raise UsageError(f"the runs' main metrics differ ({', '.join(sorted(metrics))}): compare one task at a time")
    lower = bool(metrics) and lower_is_better(next(iter(metrics)))

    def best(group: list[dict[str, Any]]) -> dict[str, Any] | None:
        return (min if lower else max)(group, key=lambda r: r["value"]) if group else None

    # a method declares whether it is a baseline (methods/base.py); the dense reference is neither
    method = best([r for r in fast if r["method"] != "dense" and not is_baseline(r["method"])])
    baseline = best([r for r in fast if r["method"] != "dense" and is_baseline(r["method"])])
    margin = None
    if method and baseline:
        margin = (baseline["value"] - method["value"]) if lower else (method["value"] - baseline["value"])
    return {"at": at, "batch": _rows_batch(rows), "method": method, "baseline": baseline, "margin": margin}


def best_at_line(best: dict[str, Any]) -> str:
    """One sentence for a `best_at` result (positive margin: the method is better)."""

    def name(r: dict[str, Any] | None) -> str:
        return f"{r['name']} ({r['method']}, {fmt(r['value'])} at {r['speedup']:.2f}x)" if r else "none"

    head = f"At >= {best['at']:.2f}x measured speedup (batch {best['batch']}): best method {name(best['method'])}, "
    tail = f"best baseline {name(best['baseline'])}"
    if best["margin"] is not None:
        tail += f"; the method is better by {best['margin']:+.4f}"
    return head + tail + "."


def _markdown(rows: list[dict[str, Any]], notes: list[str], plot: str | None) -> str:
    body = [_cells(r) for r in rows]
    batch = _rows_batch(rows)
    lines = ["# prunekit comparison", "", *table(columns(batch), body, right=set(range(3, 10)))]
    lines += [
        "",
        "value: main metric on test, else validation. kept: kept fraction of the prunable block parameters as "
        f"saved. FLOPs: pruned / dense FLOPs per token. speedup: dense / pruned median latency (measured) at batch "
        f"1 and {batch}.",
    ]
    devices = sorted({r["device"] for r in rows if r["device"]})
    if len(devices) > 1:
        lines += ["", f"Speedups were measured on different devices ({', '.join(devices)}): compare with care."]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if plot:
        lines += ["", f"![Main metric vs speedup]({plot})"]
    return "\n".join(lines) + "\n"


def compare(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    at: float | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """Rows for `run_dirs` (all read before anything is written, so a bad path fails cleanly); with
    `out_dir`, also writes comparison.md and accuracy_vs_speedup.png there; with `at`, names the best method
    and baseline at that measured speedup among the notes. Speedups are read at batch 1 and at `batch` (default:
    the largest batch every run measured, see `common_batch`).

    Returns {"rows", "notes", "best" (or None), "markdown" (path or None), "plot" (path or None)}.
    """
    if not run_dirs:
        raise UsageError("nothing to compare: give one or more run directories")
    if at is not None and not at > 0:
        raise UsageError(f"--at {at}: give the measured speedup to compare at, a positive number such as 2")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch {batch}: give a batch size the runs were benchmarked at, such as 32")
    runs = [load_run(d, with_log=False) for d in run_dirs]  # each manifest read once
    if batch is None:
        batch = common_batch([run.data.get("bench") for run in runs])
    rows = [_row(run, d, batch) for run, d in zip(runs, run_dirs, strict=True)]
    _unique_names(rows)
    spec = _plot_points(rows)
    best = best_at(rows, at) if at is not None else None
    if best is not None:
        spec["notes"].insert(0, best_at_line(best))
    result: dict[str, Any] = {"rows": rows, "notes": spec["notes"], "best": best, "markdown": None, "plot": None}
    if out_dir is None:
        return result
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"'{out}' is a file: give a folder for the comparison")
    out.mkdir(parents=True, exist_ok=True)
    plot = out / TRADEOFF_PLOT
    if spec["points"]:
        plot_tradeoff(spec["points"], spec["dense"], spec["ylabel"], plot, batch=_rows_batch(rows))
    else:
        plot.unlink(missing_ok=True)  # no stale plot from an earlier comparison
        plot = None
    md = out / COMPARISON
    md.write_text(_markdown(rows, spec["notes"], plot.name if plot else None), encoding="utf-8")
    result.update(markdown=md, plot=plot)
    return result


def format_table(rows: list[dict[str, Any]]) -> Table:
    """A rich Table of `compare` rows for the terminal."""
    tbl = Table(title="prunekit compare")
    for i, col in enumerate(columns(_rows_batch(rows))):
        tbl.add_column(col, justify="right" if i >= 3 else "left")
    for r in rows:
        tbl.add_row(*_cells(r))
    return tbl
