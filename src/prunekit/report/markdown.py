"""`report.md` for one run directory: what was pruned, how, and what it cost and gained, with plots.

The Markdown is meant to be read as plain text too: short sections, pipe tables, relative image links
(so the folder can be moved or zipped), and a dash wherever a value was not recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from prunekit.report import plots
from prunekit.report.run import (
    Run,
    dense_metrics,
    dig,
    fmt,
    fmt_ratio,
    fmt_seconds,
    human,
    is_number,
    kept_fraction,
    load_run,
    lookup,
    lower_is_better,
    main_result,
    speedup,
    split_metrics,
)

REPORT = "report.md"
PLOTS_DIR = "plots"
_OWN_PLOTS = ("train_loss.png", "eval_metrics.png", "sparsity.png", "train_values.png", "structure.png")


def table(header: list[str], rows: list[list[Any]], right: set[int] | None = None) -> list[str]:
    """A Markdown pipe table; cells are str()-ed and pipes escaped. `right`: right-aligned columns (default:
    all but the first)."""
    right = set(range(1, len(header))) if right is None else right

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, default=str) + "`"
    return fmt(value) if isinstance(value, int | float) else str(value)


def _recipe_block(recipe: Any) -> list[str]:
    try:
        text = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False).rstrip()
        return ["```yaml", text, "```"]
    except Exception:  # a recipe yaml cannot represent is still worth showing
        return ["```json", json.dumps(recipe, indent=2, default=str), "```"]


# ---------------------------------------------------------------- sections


def _summary(run: Run) -> list[str]:
    d = run.data
    res = main_result(d)
    parts = [f"**method** {d.get('method') or '-'}", f"**model** {d.get('source_model') or d.get('model_class')}"]
    if res["value"] is not None:
        text = f"**{res['metric']}** ({res['split']}) {fmt(res['value'])}"
        if res["dense"] is not None:
            text += f" vs {fmt(res['dense'])} dense ({res['value'] - res['dense']:+.4f})"
        parts.append(text)
    kept = kept_fraction(d)
    if kept is not None:
        parts.append(f"**kept** {kept:.1%} of block parameters")
    for batch in (1, 32):
        s = speedup(d.get("bench"), batch)
        if s is not None:
            parts.append(f"**speedup** {s:.2f}x at batch {batch}")
    return [" · ".join(parts)]


def _model_section(d: dict[str, Any]) -> list[str]:
    rows = [
        ["source model", d.get("source_model") or "-"],
        ["model class", d.get("model_class")],
        ["task head", d.get("task_head")],
        ["loads with plain transformers", "yes" if d.get("plain_loadable") else "no (use prunekit.load)"],
        ["patterns", ", ".join(f"{k}: {v}" for k, v in (d.get("patterns") or {}).items()) or "-"],
        ["prunekit version", d.get("prunekit_version")],
        ["created", d.get("created") or "-"],
    ]
    return ["## Model", "", *table(["", ""], rows, right=set())]


def _method_section(d: dict[str, Any]) -> list[str]:
    out = ["## Method", "", f"Method: **{d.get('method') or 'not recorded'}**"]
    if d.get("recipe"):
        out += ["", "Recipe:", "", *_recipe_block(d["recipe"])]
    report = d.get("method_report") if isinstance(d.get("method_report"), dict) else {}
    scalars = {k: v for k, v in report.items() if isinstance(v, str | int | float | bool)}
    for section in report.values():  # one level down too (NeuroPrune's final_report: heads, neurons, read dims)
        if isinstance(section, dict):
            scalars |= {k: v for k, v in section.items() if isinstance(v, str | int | float | bool)}
    if scalars:  # what the method measured of itself (e.g. a calibration's tokens, seconds, peak memory)
        out += ["", "Method report:", ""] + [f"- {k.replace('_', ' ')}: {_inline(v)}" for k, v in scalars.items()]
    return out


def _task_section(d: dict[str, Any]) -> list[str]:
    task, split = d.get("task"), d.get("split")
    if not task and not split:
        return []
    out = ["## Task and data", ""]
    for k, v in (task or {}).items():
        out.append(f"- {k}: {_inline(v)}")
    if isinstance(split, dict) and split:
        out += ["", "Data split:", ""] + [f"- {k}: {_inline(v)}" for k, v in split.items()]
    elif split:
        out += ["", f"Data split: {_inline(split)}"]
    return out


def _metrics_section(d: dict[str, Any]) -> list[str]:
    metrics = d.get("metrics") or {}
    splits = [s for s in ("validation", "test") if split_metrics(metrics, s)]
    names: dict[str, None] = {}
    for s in ("validation", "test"):
        for k in [*dense_metrics(metrics, s), *split_metrics(metrics, s)]:
            names.setdefault(k, None)
    if not names:
        return ["## Metrics", "", "No metrics recorded."]
    dense_by_split = {s: dense_metrics(metrics, s) for s in ("validation", "test")}
    flat_dense = not any(isinstance(v, dict) for v in (metrics.get("dense") or {}).values())
    header = ["metric"]
    if flat_dense:
        header.append("dense")
    for s in splits:
        header += ([f"dense ({s})"] if not flat_dense else []) + [f"pruned ({s})", f"Δ {s}"]
    rows = []
    for name in names:
        row = [name]
        if flat_dense:
            row.append(fmt(dense_by_split["validation"].get(name)))
        for s in splits:
            dense = lookup(dense_by_split[s], name, s)
            pruned = lookup(split_metrics(metrics, s), name, s)
            if not flat_dense:
                row.append(fmt(dense))
            row += [fmt(pruned), f"{pruned - dense:+.4f}" if pruned is not None and dense is not None else "-"]
        rows.append(row)
    out = ["## Metrics", "", *table(header, rows)]
    if any(lower_is_better(n) for n in names):
        out += ["", "Δ is pruned − dense; for losses and perplexity lower is better."]
    else:
        out += ["", "Δ is pruned − dense."]
    res = main_result(d)
    if res["metric"]:
        out.append(f"Main metric: {res['metric']}.")
    return out


def _sparsity_section(d: dict[str, Any]) -> list[str]:
    sparsity = d.get("sparsity") or {}
    views = {k: v for k, v in sparsity.items() if isinstance(v, dict) and "params" in v}
    if not views and "params" in sparsity:
        views = {"saved": sparsity}
    if not views:
        return []
    label = {"mask": "mask (what the method removed)", "saved": "saved (non-zero in the saved weights)"}
    rows = []
    for key, v in views.items():
        params, kept = v.get("params"), v.get("kept")
        frac = kept / params if is_number(params) and is_number(kept) and params else None
        sp = v.get("sparsity") if is_number(v.get("sparsity")) else (1 - frac if frac is not None else None)
        rows.append([label.get(key, key), fmt(params), fmt(kept), fmt_ratio(frac), fmt_ratio(sp)])
    out = ["## Sparsity", "", "Over the prunable linears of the transformer blocks (weights and biases).", ""]
    return out + table(["view", "parameters", "kept", "kept fraction", "sparsity"], rows)


def dense_structure(d: dict[str, Any], n_layers: int) -> list[dict[str, Any]] | None:
    """Dense per-layer counts from the manifest's optional `dense_structure`: a per-layer list of entries,
    or a dict of per-layer lists or uniform numbers for heads / kv_heads / ffn_width."""
    ds = d.get("dense_structure")
    keys = ("heads", "kv_heads", "ffn_width")
    if isinstance(ds, list) and ds:
        by_layer = {e.get("layer", i): e for i, e in enumerate(ds) if isinstance(e, dict)}
        return [{k: dig(by_layer, i, k) for k in keys} for i in range(n_layers)]
    if isinstance(ds, dict) and ds:
        out = []
        for i in range(n_layers):
            entry = {}
            for k in keys:
                v = ds.get(k)
                entry[k] = dig(v, i) if isinstance(v, list) else v
            out.append(entry)
        return out
    return None


def _structure_section(d: dict[str, Any], plot: str | None) -> list[str]:
    layers = d.get("structure") or []
    if not layers:
        return []
    dense = dense_structure(d, len(layers))

    def count(kept: Any, full: Any) -> str:
        return f"{fmt(kept)} / {fmt(full)}" if is_number(full) else fmt(kept)

    rows = []
    for i, e in enumerate(layers):
        full = dense[i] if dense else {}
        rows.append(
            [
                e.get("layer", i),
                e.get("attention", "-"),
                count(e.get("heads"), full.get("heads")),
                count(e.get("kv_heads"), full.get("kv_heads")),
                fmt(e.get("attn_rows")),
                e.get("ffn", "-"),
                count(e.get("ffn_width"), full.get("ffn_width")),
                fmt(e.get("ffn_rows")),
            ]
        )
    heads = sum(e.get("heads") or 0 for e in layers)
    width = sum(e.get("ffn_width") or 0 for e in layers)
    dense_heads = sum(x["heads"] for x in dense if is_number(x["heads"])) if dense else None
    dense_width = sum(x["ffn_width"] for x in dense if is_number(x["ffn_width"])) if dense else None
    rows.append(["**total**", "", count(heads, dense_heads), "", "", "", count(width, dense_width), ""])
    header = ["layer", "attention", "heads", "KV heads", "attn rows", "FFN", "FFN width", "FFN rows"]
    out = ["## Structure per layer", ""]
    out.append("Kept / dense counts." if dense else "Kept counts (the manifest records no dense counts).")
    out += ["", *table(header, rows, right={0, 2, 3, 4, 6, 7})]
    out += ["", "“rows” are the output rows an attention or FFN block still computes, when row-pruned."]
    if plot:
        out += ["", f"![Kept heads and FFN neurons per layer]({plot})"]
    return out


def _bench_section(bench: Any) -> list[str]:
    if not isinstance(bench, dict):
        return []
    out = ["## Benchmark", ""]
    setup = [f"device {bench.get('device', '-')}", f"{bench.get('threads', '-')} threads"]
    setup += [f"torch {bench['torch_version']}"] if bench.get("torch_version") else []
    if bench.get("repeats"):
        setup.append(f"{bench.get('warmup', '-')} warm-up + {bench['repeats']} timed runs per point")
    out += ["Setup: " + ", ".join(setup) + ".", ""]
    out += [f"**Note:** {note}." for note in bench.get("notes") or [] if isinstance(note, str)]
    out += [""] if bench.get("notes") else []
    rows = []
    params = bench.get("params") or {}
    for key in ("total", "blocks", "embeddings", "head"):
        dense, pruned = dig(params, "dense", key), dig(params, "pruned", key)
        if dense is not None or pruned is not None:
            rows.append([f"parameters ({key})", human(dense), human(pruned), fmt_ratio(dig(params, "ratio", key))])
    for f in bench.get("flops_per_token") or []:
        rows.append(
            [
                f"FLOPs/token (seq {f.get('seq_len')})",
                human(dig(f, "dense", "total")),
                human(dig(f, "pruned", "total")),
                fmt_ratio(dig(f, "ratio", "total")),
            ]
        )
    mem = bench.get("memory")
    if isinstance(mem, dict):
        point = f"b={mem.get('batch')} s={mem.get('seq_len')}"
        for key, label in (("peak_mb", "peak memory MB"), ("forward_mb", "forward memory MB")):
            dense, pruned = dig(mem, "dense", key), dig(mem, "pruned", key)
            if dense is not None or pruned is not None:
                rows.append([f"{label} ({point})", fmt(dense, 1), fmt(pruned, 1), fmt_ratio(dig(mem, "ratio", key))])
    if rows:
        out += table(["measure", "dense", "pruned", "pruned / dense"], rows)
    lat_rows = []
    for p in bench.get("latency") or []:
        if not isinstance(p, dict):
            continue
        lat_rows.append(
            [
                p.get("batch"),
                p.get("seq_len"),
                fmt(dig(p, "dense", "median_ms"), 2),
                fmt(dig(p, "pruned", "median_ms"), 2),
                fmt_ratio(p.get("speedup"), "x"),
                fmt(dig(p, "dense", "throughput_seq_per_s"), 1),
                fmt(dig(p, "pruned", "throughput_seq_per_s"), 1),
            ]
        )
    if lat_rows:
        header = ["batch", "seq len", "dense ms", "pruned ms", "speedup", "dense seq/s", "pruned seq/s"]
        out += ["", "Latency (median of the timed runs; speedup = dense / pruned):", ""]
        out += table(header, lat_rows, right=set(range(7)))
    return out


def _timings_section(timings: Any) -> list[str]:
    if not isinstance(timings, dict) or not timings:
        return []
    rows = [[k.removesuffix("_s").replace("_", " "), fmt_seconds(v)] for k, v in timings.items()]
    return ["## Timings", "", *table(["step", "time"], rows)]


def _curves_section(run: Run, figures: list[tuple[str, str]]) -> list[str]:
    out = ["## Training curves", ""]
    log = run.log
    if log.status == "missing":
        out.append("No metrics.jsonl in the run directory: no curves.")
    elif log.status == "empty":
        out.append("metrics.jsonl is empty: no curves.")
    else:
        source = "the manifest's history (no usable metrics.jsonl)" if log.status == "history" else "metrics.jsonl"
        out.append(f"From {source}: {len(log.train)} training and {len(log.evals)} evaluation records.")
        if len(log.stages) > 1:
            out.append(f"Stages {', '.join(log.stages)} follow each other on the step axis (dotted lines).")
        if not figures:
            out.append("Nothing numeric to plot.")
    if log.skipped:
        out.append(f"{log.skipped} unreadable line(s) skipped (e.g. a line cut off when the job stopped).")
    for title, link in figures:
        out += ["", f"### {title}", "", f"![{title}]({link})"]
    return out


# ---------------------------------------------------------------- entry point


def write_report(run_dir: str | Path, name: str | None = None) -> Path:
    """Write `run_dir/report.md` and its figures under `run_dir/plots/`; returns the report's path.

    `name` titles the report (default: the folder's name; a run being built in its hidden staging folder
    passes its final name). Raises UsageError when `run_dir` is not a run directory. Re-running replaces
    the previous report.
    """
    run = load_run(run_dir)
    title = name or run.name
    root = Path(run_dir)
    plot_dir = root / PLOTS_DIR
    for name in _OWN_PLOTS:  # a re-run must not leave a stale figure the new report does not link
        (plot_dir / name).unlink(missing_ok=True)
    d = run.data
    metrics = d.get("metrics") or {}
    dense = dense_metrics(metrics, "validation") or dense_metrics(metrics, "test")
    figures = plots.plot_curves(run.log.train, run.log.evals, dense, plot_dir, run.log.boundaries)
    structure_link = None
    if d.get("structure"):
        dense_counts = dense_structure(d, len(d["structure"]))
        path = plots.plot_structure(d["structure"], dense_counts, plot_dir / "structure.png")
        structure_link = path.relative_to(root).as_posix()

    lines = [f"# prunekit report: {title}", "", *_summary(run)]
    for section in (
        _model_section(d),
        _method_section(d),
        _task_section(d),
        _metrics_section(d),
        _sparsity_section(d),
        _structure_section(d, structure_link),
        _bench_section(d.get("bench")),
        _timings_section(d.get("timings")),
        _curves_section(run, [(t, p.relative_to(root).as_posix()) for t, p in figures]),
    ):
        if section:
            lines += ["", *section]
    out = root / REPORT
    tmp = root / f".{REPORT}.tmp-{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
