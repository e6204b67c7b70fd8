"""PNG figures for reports, drawn on matplotlib's Agg canvas directly: no pyplot, so no display, no global
backend switch and no figure left open in a long-running process."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunekit.report.run import POSITION_KEYS, is_number, lookup

MAX_PANELS = 8


def new_figure(panels: int, width: float = 7.0, panel_height: float = 2.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, max(2.8, panel_height * panels + 0.6)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, squeeze=False, sharex=True)[:, 0]
    return fig, list(axes)


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(x, y) of one key: x is the record's position `_x` (its step, after earlier stages), else its step,
    else its index; non-finite values are dropped."""
    xs, ys = [], []
    for i, r in enumerate(records):
        y = r.get(key)
        if not is_number(y):
            continue
        x = r.get("_x", r.get("step"))
        xs.append(x if is_number(x) else i)
        ys.append(y)
    return xs, ys


Line = tuple[str, list[float], list[float]]


def lines(records: Sequence[dict[str, Any]], key: str, by: Sequence[str] = ("stage",)) -> list[Line]:
    """One line per group of records (by stage, and split for evaluations), labelled by what differs."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(str(r.get(k, "")) for k in by), []).append(r)
    varying = [i for i in range(len(by)) if len({g[i] for g in groups}) > 1]
    out = []
    for group, recs in groups.items():
        xs, ys = series(recs, key)
        if xs:
            out.append((" ".join(group[i] for i in varying) or key, xs, ys))
    return out


def numeric_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """Keys with at least one finite number, in first-seen order."""
    seen: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in POSITION_KEYS and is_number(v):
                seen.setdefault(k, None)
    return list(seen)


def is_sparsity_key(key: str) -> bool:
    k = key.lower()
    return "sparsity" in k or "density" in k


def is_loss_key(key: str) -> bool:
    return "loss" in key.lower()


def _line_figure(panels: list[tuple[str, list[Line], float | None]], path: Path, boundaries: Sequence[float] = ()):
    """One panel per (title, [(label, x, y)], reference line or None); dotted lines at stage boundaries."""
    fig, axes = new_figure(len(panels))
    for ax, (title, panel_lines, ref) in zip(axes, panels, strict=True):
        for x in boundaries:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        for label, xs, ys in panel_lines:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.2, label=label)
        if ref is not None:
            ax.axhline(ref, color="grey", linestyle="--", linewidth=1, label="dense")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if len(panel_lines) > 1 or ref is not None:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("step (stages one after another)" if boundaries else "step")
    return save_figure(fig, path)


def plot_curves(
    train: Sequence[dict[str, Any]],
    evals: Sequence[dict[str, Any]],
    dense: dict[str, float],
    out_dir: Path,
    boundaries: Sequence[float] = (),
) -> list[tuple[str, Path]]:
    """Training losses, evaluation metrics, sparsity/density and other logged values (lr, lambda...),
    each a figure when something was logged. Returns (title, path) pairs in report order."""
    figures: list[tuple[str, Path]] = []
    train_keys = numeric_keys(train)
    eval_all = numeric_keys(evals)

    def figure(title: str, panels: list[tuple[str, list[Line], float | None]], name: str) -> None:
        panels = [p for p in panels if p[1]][:MAX_PANELS]
        if panels:
            figures.append((title, _line_figure(panels, out_dir / name, boundaries)))

    losses = sorted((k for k in train_keys if is_loss_key(k)), key=lambda k: (k != "loss", k))
    figure("Training losses", [(k, lines(train, k), None) for k in losses], "train_loss.png")

    eval_keys = sorted((k for k in eval_all if not is_sparsity_key(k)), key=lambda k: is_loss_key(k))
    panels = [(k, lines(evals, k, ("stage", "split")), lookup(dense, k.removeprefix("eval_"))) for k in eval_keys]
    figure("Evaluation metrics", panels, "eval_metrics.png")

    sparse = []
    for kind, records, keys in (("train", train, train_keys), ("eval", evals, eval_all)):
        for k in filter(is_sparsity_key, keys):
            sparse += [(f"{kind} {k}" + ("" if g == k else f" ({g})"), xs, ys) for g, xs, ys in lines(records, k)]
    figure("Sparsity and density", [("fraction", sparse, None)], "sparsity.png")

    others = [k for k in train_keys if not is_loss_key(k) and not is_sparsity_key(k)]
    figure("Other training values", [(k, lines(train, k), None) for k in others], "train_values.png")
    return figures


def plot_structure(kept: list[dict[str, Any]], dense: list[dict[str, Any]] | None, path: Path) -> Path:
    """Kept attention heads and FFN neurons per layer, over the dense counts when they are known."""
    fig, axes = new_figure(2, width=max(6.0, 0.35 * len(kept) + 3), panel_height=2.2)
    layers = [e.get("layer", i) for i, e in enumerate(kept)]
    for ax, key, title in zip(axes, ("heads", "ffn_width"), ("attention heads", "FFN neurons"), strict=True):
        if dense is not None:
            full = [d.get(key) if is_number(d.get(key)) else math.nan for d in dense]
            ax.bar(layers, full, color="#d0d0d0", label="dense", width=0.8)
        ax.bar(layers, [e.get(key) or 0 for e in kept], color="#3b75af", label="kept", width=0.55)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
        if dense is not None:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("layer")
    axes[-1].set_xticks(layers)
    return save_figure(fig, path)


def plot_tradeoff(
    points: list[dict[str, Any]], dense_points: list[tuple[str, float]], ylabel: str, path: Path, batch: int = 32
):
    """Main metric against speedup at `batch`: one labelled point per run (hollow where the speedup is 1/FLOPs
    ratio), and the dense model(s) at 1.0. A positive metric spanning over 10x (perplexities of a failed run
    beside good ones) gets a log axis, or the good ones would sit on one line."""
    fig, (ax,) = new_figure(1, width=7.0, panel_height=4.5)
    labels = []
    for p in points:
        estimated = p["estimated"]
        ax.scatter(
            [p["x"]],
            [p["y"]],
            s=45,
            facecolors="none" if estimated else "#3b75af",
            edgecolors="#3b75af",
            zorder=3,
        )
        labels.append(
            ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 5), fontsize="small")
        )
    for label, value in dense_points:
        ax.scatter([1.0], [value], marker="*", s=120, color="#c44e52", zorder=3)
        labels.append(ax.annotate(label, (1.0, value), textcoords="offset points", xytext=(5, -12), fontsize="small"))
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    ys = [p["y"] for p in points] + [v for _, v in dense_points]
    if ys and min(ys) > 0 and max(ys) > 10 * min(ys):
        ax.set_yscale("log")
    xlabel = f"measured speedup at batch {batch}"
    if any(p["estimated"] for p in points):
        xlabel += " (hollow: 1 / FLOPs ratio, not measured)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    separate_labels(labels)
    return save_figure(fig, path)


def separate_labels(labels: list, gap_px: float = 2.0, rounds: int = 100) -> None:
    """Nudge overlapping point labels apart vertically: runs that land close together (2:4 beside ASP) would
    otherwise print their names over each other. Labels leave the layout so that moving them moves nothing else."""
    if len(labels) < 2:
        return
    fig = labels[0].figure
    for t in labels:
        t.set_in_layout(False)
    fig.canvas.draw()  # fixes the layout; the boxes below need its renderer
    renderer = fig.canvas.get_renderer()
    to_points = 72.0 / fig.dpi
    for _ in range(rounds):
        boxes = [t.get_window_extent(renderer) for t in labels]
        moved = False
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                lo, hi = (i, j) if boxes[i].y0 <= boxes[j].y0 else (j, i)
                a, b = boxes[lo], boxes[hi]
                overlap = min(a.x1, b.x1) - max(a.x0, b.x0) > 0 and a.y1 + gap_px > b.y0
                if overlap:
                    half = (a.y1 + gap_px - b.y0) / 2 * to_points + 0.5
                    for k, sign in ((lo, -1), (hi, 1)):
                        x, y = labels[k].xyann
                        labels[k].xyann = (x, y + sign * half)
                    for k in (lo, hi):
                        boxes[k] = labels[k].get_window_extent(renderer)
                    moved = True
        if not moved:
            return
