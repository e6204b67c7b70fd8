"""Reports and comparisons from synthetic run directories: values reach the Markdown, figures are real PNGs,
the right bench grid point is picked, and gaps (no log, no bench, bad paths) are handled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from prunekit.core.errors import UsageError
from prunekit.report import compare, format_table, read_metrics_log, run_row, write_report
from prunekit.report.compare import _plot_points
from prunekit.report.run import main_metric
from prunekit.runs.io import MANIFEST, LayerEntry, Manifest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _latency(batch: int, seq_len: int, dense_ms: float, pruned_ms: float) -> dict:
    def lat(ms: float) -> dict:
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "iqr_ms": 0.1, "throughput_seq_per_s": batch / ms * 1e3}

    return {
        "batch": batch,
        "seq_len": seq_len,
        "dense": lat(dense_ms),
        "pruned": lat(pruned_ms),
        "speedup": dense_ms / pruned_ms,
        "throughput_ratio": dense_ms / pruned_ms,
    }


def _flops(seq_len: int, dense: float, pruned: float) -> dict:
    return {
        "seq_len": seq_len,
        "dense": {"total": dense},
        "pruned": {"total": pruned},
        "ratio": {"total": pruned / dense},
    }


BENCH = {
    "device": "cpu",
    "threads": 4,
    "torch_version": "2.5.0",
    "warmup": 3,
    "repeats": 10,
    "params": {
        "dense": {"total": 1000, "blocks": 800, "embeddings": 150, "head": 50},
        "pruned": {"total": 600, "blocks": 400, "embeddings": 150, "head": 50},
        "ratio": {"total": 0.6, "blocks": 0.5, "embeddings": 1.0, "head": 1.0},
    },
    "flops_per_token": [_flops(64, 1000.0, 400.0), _flops(128, 1000.0, 500.0)],
    "latency": [
        _latency(1, 128, 10.0, 8.0),  # 1.25x
        _latency(32, 64, 100.0, 50.0),  # 2.0x, shorter sequence: not the one picked
        _latency(32, 128, 200.0, 125.0),  # 1.6x
    ],
    "memory": {
        "batch": 32,
        "seq_len": 128,
        "dense": {"peak_mb": 500.0, "forward_mb": 100.0},
        "pruned": {"peak_mb": 400.0, "forward_mb": 60.0},
        "ratio": {"peak_mb": 0.8, "forward_mb": 0.6},
    },
}

STRUCTURE = [
    LayerEntry(layer=0, attention="kept", heads=3, kv_heads=3, ffn="kept", ffn_width=24),
    LayerEntry(layer=1, attention="dropped", heads=0, kv_heads=0, ffn="kept", ffn_width=12, ffn_rows=30),
    LayerEntry(layer=2, attention="kept", heads=4, kv_heads=4, ffn="dropped", ffn_width=0),
]


def make_run(path: Path, *, metrics_log: str | None = "", **fields) -> Path:
    """A run directory with a handmade manifest (no weights: reports never load the model)."""
    base = dict(
        prunekit_version="0.1.0",
        model_class="BertForSequenceClassification",
        task_head="sequence-classification",
        source_model="tiny-bert",
        method="movement",
        recipe={"target_sparsity": 0.5, "schedule": {"warmup_steps": 10}},
        task={"kind": "classification", "dataset": "sst2", "main_metric": "accuracy"},
        split={"train": 800, "validation": 100, "test": 100, "seed": 0},
        structure=STRUCTURE,
        plain_loadable=False,
        sparsity={
            "mask": {"params": 20000, "kept": 9000, "sparsity": 0.55},
            "saved": {"params": 20000, "kept": 8000, "sparsity": 0.6},
        },
        metrics={
            "dense": {"accuracy": 0.9125, "eval_loss": 0.25},
            "validation": {"accuracy": 0.8875, "eval_loss": 0.31},
            "test": {"accuracy": 0.8512, "eval_loss": 0.35},
        },
        timings={"train_s": 3725.0, "total_s": 3800.5},
        bench=BENCH,
    )
    base.update(fields)
    path.mkdir(parents=True)
    (path / MANIFEST).write_text(Manifest(**base).model_dump_json(indent=2))
    if metrics_log is not None:
        (path / "metrics.jsonl").write_text(metrics_log)
    return path


LOG = "\n".join(
    [
        json.dumps({"type": "train", "step": 1, "epoch": 0.1, "loss": 2.0, "ce_loss": 1.5, "lr": 1e-4, "lambda": 0.1}),
        json.dumps(
            {"type": "train", "step": 2, "epoch": 0.2, "loss": 1.5, "ce_loss": 1.2, "lr": 2e-4, "sparsity": 0.2}
        ),
        json.dumps({"type": "eval", "step": 2, "epoch": 0.2, "split": "validation", "accuracy": 0.8, "eval_loss": 0.5}),
        json.dumps({"type": "train", "step": 3, "loss": 1.0, "sparsity": 0.4, "density": 0.6, "new_thing": "x"}),
        json.dumps({"step": 4, "split": "validation", "accuracy": 0.85, "sparsity": 0.5}),  # no "type"
        "",
        '{"type": "train", "step": 5, "lo',  # cut off mid-write
    ]
)


def test_report_holds_values_and_valid_plots(tmp_path):
    run = make_run(
        tmp_path / "run",
        metrics_log=LOG,
        dense_structure={"heads": 4, "kv_heads": 4, "ffn_width": [48, 48, 48]},
    )
    path = write_report(run)
    assert path == run / "report.md"
    text = path.read_text()
    assert text.startswith("# prunekit report: run\n")
    assert write_report(run, name="final-name").read_text().startswith("# prunekit report: final-name\n")
    text = path.read_text()
    for value in ("0.9125", "0.8875", "0.8512", "-0.0613", "-0.0250", "tiny-bert", "movement", "sst2"):
        assert value in text, value
    assert "target_sparsity: 0.5" in text and "warmup_steps: 10" in text  # recipe as yaml
    assert "| mask (what the method removed) | 20,000 | 9,000 | 0.450 | 0.550 |" in text
    assert "| 0 | kept | 3 / 4 | 3 / 4 |" in text and "| 24 / 48 |" in text and "7 / 12" in text
    assert "1.250x" in text and "1.600x" in text and "2.000x" in text  # every latency grid point
    assert "FLOPs/token (seq 128)" in text and "0.500" in text
    assert "1h 02m 05s" in text  # train_s
    assert "1 unreadable line(s) skipped" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(links) == {
        f"plots/{n}.png" for n in ("structure", "train_loss", "eval_metrics", "sparsity", "train_values")
    }
    for link in links:
        assert not Path(link).is_absolute() and _is_png(run / link), link


@pytest.mark.parametrize("log", [None, "", "\n\n"], ids=["missing", "empty", "blank"])
def test_report_without_metrics_log(tmp_path, log):
    run = make_run(tmp_path / "run", metrics_log=log, bench=None, metrics={}, timings={})
    text = write_report(run).read_text()
    assert ("No metrics.jsonl" if log is None else "metrics.jsonl is empty") in text
    assert "No metrics recorded." in text and "## Benchmark" not in text
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["structure.png"]
    assert _is_png(run / "plots" / "structure.png")


def test_report_rerun_drops_stale_plots(tmp_path):
    run = make_run(tmp_path / "run", metrics_log=LOG)
    write_report(run)
    (run / "metrics.jsonl").unlink()
    write_report(run)
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["structure.png"]


def test_report_of_saved_tiny_model(tmp_path):
    import prunekit
    from tiny import tiny_model

    run = prunekit.save(
        tiny_model("bert"),
        tmp_path / "run",
        method="magnitude",
        metrics={"validation": {"accuracy": 0.5}},
        timings={"compact_s": 0.1},
    )
    text = write_report(run).read_text()
    assert "magnitude" in text and "0.5000" in text and "| 2 | kept | 4 |" in text
    assert _is_png(run / "plots" / "structure.png")


def test_metrics_log_is_tolerant(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(LOG + "\n[1, 2]\nnot json\n")
    log = read_metrics_log(tmp_path)
    assert [r["step"] for r in log.train] == [1, 2, 3]
    assert [r["step"] for r in log.evals] == [2, 4]
    assert log.skipped == 3 and log.status == "ok"
    assert read_metrics_log(tmp_path / "nowhere").status == "missing"


def test_compare_rows_pick_the_right_numbers(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(
        tmp_path / "b",
        method="magnitude",
        metrics={"dense": {"accuracy": 0.9125}, "validation": {"accuracy": 0.7}},
        sparsity={"saved": {"params": 400, "kept": 100}},
        bench={"flops_per_token": [_flops(128, 1000.0, 250.0)], "latency": [_latency(1, 128, 4.0, 2.0)]},
        timings={"compact_s": 1.0},
    )
    c = make_run(tmp_path / "c", method="none", metrics={}, sparsity={}, bench=None, timings={})
    out = tmp_path / "cmp"
    result = compare([str(a), str(b), str(c)], str(out))
    ra, rb, rc = result["rows"]
    assert ra["name"] == "a" and ra["method"] == "movement" and ra["metric"] == "accuracy"
    assert ra["split"] == "test" and ra["value"] == 0.8512 and ra["delta"] == pytest.approx(0.8512 - 0.9125)
    assert ra["kept_fraction"] == pytest.approx(0.4)  # saved, not mask
    assert ra["speedup_b1"] == pytest.approx(1.25)
    assert ra["batch"] == 32 and ra["speedup"] == pytest.approx(1.6)  # the seq 128 point, not seq 64
    assert ra["flops_ratio"] == pytest.approx(0.5) and ra["flops_seq_len"] == 128
    assert ra["train_s"] == 3725.0
    assert rb["split"] == "validation" and rb["value"] == 0.7 and rb["kept_fraction"] == 0.25
    assert rb["speedup_b1"] == 2.0 and rb["speedup"] is None and rb["flops_ratio"] == 0.25
    assert rb["train_s"] is None
    assert rc["value"] is None and rc["kept_fraction"] is None and rc["speedup"] is None
    assert any("b: no latency at batch 32" in n for n in result["notes"])
    assert any(n.startswith("c is not plotted") for n in result["notes"])
    assert _is_png(out / "accuracy_vs_speedup.png") and result["plot"] == out / "accuracy_vs_speedup.png"
    md = (out / "comparison.md").read_text()
    assert "| a | movement | accuracy (test) | 0.8512 | -0.0613 | 0.400 | 0.500 | 1.250x | 1.600x |" in md
    assert "1 / FLOPs ratio" in md and "](accuracy_vs_speedup.png)" in md


def test_compare_dense_row_has_no_delta_against_the_model_before_fine_tuning(tmp_path):
    """A dense run's manifest records the pre-fine-tune model as "dense": that is not the reference."""
    before = {"dense": {"accuracy": 0.5}, "test": {"accuracy": 0.84}}
    dense = make_run(tmp_path / "dense", method="dense", metrics=before)
    pruned = make_run(tmp_path / "pruned", metrics={"dense": {"accuracy": 0.84}, "test": {"accuracy": 0.80}})
    result = compare([str(dense), str(pruned)])
    rd, rp = result["rows"]
    assert rd["value"] == 0.84 and rd["dense_value"] is None and rd["delta"] is None
    assert rp["delta"] == pytest.approx(-0.04)
    assert _plot_points(result["rows"])["dense"] == [("dense", 0.84)]  # one reference line, the fine-tuned one


def _fast_run(path: Path, method: str, value: float, speedup_b32: float, metric: str = "accuracy") -> Path:
    bench = {"latency": [_latency(32, 128, 100.0 * speedup_b32, 100.0)]}
    task = {"kind": "lm" if metric == "perplexity" else "classification", "main_metric": metric}
    metrics = {"dense": {metric: 1.0}, "test": {metric: value}}
    return make_run(path, method=method, task=task, bench=bench, metrics=metrics)


def test_best_at_picks_the_best_method_and_baseline_at_the_measured_speedup(tmp_path):
    runs = [
        _fast_run(tmp_path / "np", "neuroprune", 0.80, 2.1),
        _fast_run(tmp_path / "mlp", "mlpruning", 0.84, 1.9),  # better but under 2x: not a candidate
        _fast_run(tmp_path / "nas", "nas", 0.82, 2.5),
        _fast_run(tmp_path / "mag", "magnitude", 0.78, 3.0),
        _fast_run(tmp_path / "mov", "movement", 0.81, 2.0),  # exactly at the threshold counts
        _fast_run(tmp_path / "l1", "l1", 0.85, 1.0),
    ]
    result = compare(runs, tmp_path / "cmp", at=2.0)
    best = result["best"]
    assert best["method"]["name"] == "nas" and best["baseline"]["name"] == "mov"
    assert best["margin"] == pytest.approx(0.01)
    assert result["notes"][0].startswith("At >= 2.00x measured speedup (batch 32): best method nas (nas, 0.8200")
    assert "better by +0.0100" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert compare(runs, at=1.5)["best"]["method"]["name"] == "mlp"
    none = compare(runs, at=4.0)["best"]
    assert none["method"] is None and none["baseline"] is None and none["margin"] is None
    assert "best method none" in compare(runs, at=4.0)["notes"][0]

    lm = [_fast_run(tmp_path / "p1", "neuroprune", 30.0, 2.2, "perplexity"),
          _fast_run(tmp_path / "p2", "neuroprune", 25.0, 2.2, "perplexity"),
          _fast_run(tmp_path / "p3", "movement", 28.0, 2.2, "perplexity")]  # fmt: skip
    best = compare(lm, at=2.0)["best"]
    assert best["method"]["name"] == "p2" and best["margin"] == pytest.approx(3.0)  # lower perplexity wins
    with pytest.raises(UsageError, match="main metrics differ"):
        compare([runs[0], lm[0]], at=2.0)
    with pytest.raises(UsageError, match="positive number"):
        compare(runs, at=0)


def test_compare_reads_speedups_at_the_largest_batch_every_run_measured(tmp_path):
    """Decoder suites bench at batch 1 and 8: the table, the plot and --at read batch 8, not a missing 32."""

    def run(name: str, method: str, value: float, batches: dict[int, float]) -> Path:
        bench = {"latency": [_latency(b, 128, 100.0 * s, 100.0) for b, s in batches.items()]}
        metrics = {"dense": {"perplexity": 20.0}, "test": {"perplexity": value}}
        return make_run(tmp_path / name, method=method, task={"kind": "lm", "main_metric": "perplexity"},
                        bench=bench, metrics=metrics)  # fmt: skip

    np_run = run("np", "neuroprune", 30.0, {1: 1.1, 8: 2.5})
    l1_run = run("l1", "l1", 25.0, {1: 1.0, 8: 2.0, 32: 3.0})  # also measured at 32: not shared, not used
    result = compare([np_run, l1_run], tmp_path / "cmp", at=2.0)
    assert [r["batch"] for r in result["rows"]] == [8, 8]
    assert [r["speedup"] for r in result["rows"]] == [pytest.approx(2.5), pytest.approx(2.0)]
    assert not any("no latency" in n for n in result["notes"])
    assert result["best"]["batch"] == 8 and result["best"]["margin"] == pytest.approx(-5.0)  # lower wins: l1
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| speedup b1 | speedup b8 |" in md and "| 2.500x |" in md
    assert compare([np_run, l1_run], batch=32)["rows"][0]["speedup"] is None  # asked for: read as asked
    assert compare([l1_run], None)["rows"][0]["batch"] == 32  # one run: its largest
    with pytest.raises(UsageError, match="--batch 0"):
        compare([np_run], batch=0)


def test_compare_without_out_dir_writes_nothing(tmp_path):
    a = make_run(tmp_path / "runs" / "x" / "out")
    b = make_run(tmp_path / "runs" / "y" / "out")
    result = compare([a, b], None)
    assert [r["name"] for r in result["rows"]] == ["x/out", "y/out"]  # clashing folder names told apart
    assert result["markdown"] is None and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["x", "y"]


def test_compare_bad_paths_are_usage_errors(tmp_path):
    good = make_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="does not exist"):
        compare([str(good), str(tmp_path / "missing")], str(tmp_path / "out"))
    with pytest.raises(UsageError, match="prunekit.json"):
        compare([str(tmp_path / "empty")])
    with pytest.raises(UsageError):
        compare([])
    with pytest.raises(UsageError, match="does not exist"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "out").exists()  # nothing written when an input is bad


def test_format_table_renders_rows(tmp_path):
    rows = [run_row(make_run(tmp_path / "a"))]
    table = format_table(rows)
    assert table.row_count == 1 and len(table.columns) == 10
    console = Console(record=True, width=200)
    console.print(table)
    out = console.export_text()
    assert "0.8512" in out and "1.600x" in out and "movement" in out


def test_main_metric_falls_back_without_task(tmp_path):
    assert main_metric({"metrics": {"validation": {"eval_loss": 0.3, "f1": 0.7}}}) == "f1"
    assert main_metric({"metrics": {"test": {"eval_loss": 0.3, "bleu": 20.0, "accuracy": 0.5}}}) == "accuracy"
    assert main_metric({"metrics": {}}) is None


def test_pipeline_shaped_run(tmp_path):
    """As the pipeline writes it: dense metrics keyed by split, stage timings, two stages in one log."""
    log = [{"stage": "finetune", "type": "train", "step": s, "loss": 1.0 / s, "lr": 1e-4} for s in (1, 2, 3)] + [
        {"stage": "finetune", "type": "eval", "split": "validation", "step": 3, "accuracy": 0.9},
        {"stage": "prune", "type": "train", "step": 1, "loss": 0.9, "sparsity": 0.1},
        {"stage": "prune", "type": "train", "step": 2, "loss": 0.8, "sparsity": 0.3},
        {"stage": "prune", "type": "eval", "split": "validation", "step": 2, "accuracy": 0.86, "sparsity": 0.3},
    ]
    run = make_run(
        tmp_path / "run",
        metrics_log="".join(json.dumps(r) + "\n" for r in log),
        metrics={
            "dense": {"validation": {"accuracy": 0.91}, "test": {"accuracy": 0.9}},
            "validation": {"accuracy": 0.86},
            "test": {"accuracy": 0.84},
        },
        timings={"finetune_s": 100.0, "prune_s": 200.0, "total_s": 400.0},
    )
    parsed = read_metrics_log(run)
    assert parsed.stages == ["finetune", "prune"] and parsed.boundaries == [3]
    assert [r["_x"] for r in parsed.train] == [1, 2, 3, 4, 5]  # prune steps follow the fine-tune ones
    text = write_report(run).read_text()
    assert "| accuracy | 0.9100 | 0.8600 | -0.0500 | 0.9000 | 0.8400 | -0.0600 |" in text
    assert "Stages finetune, prune" in text and _is_png(run / "plots" / "sparsity.png")
    row = run_row(run)
    assert row["train_s"] == 300.0 and row["dense_value"] == 0.9 and row["delta"] == pytest.approx(-0.06)


def test_manifest_history_stands_in_for_a_missing_log(tmp_path):
    history = [{"type": "eval", "split": "validation", "step": s, "accuracy": a} for s, a in ((1, 0.7), (2, 0.8))]
    run = make_run(tmp_path / "run", metrics_log=None, history=history)
    text = write_report(run).read_text()
    assert "manifest's history" in text and "](plots/eval_metrics.png)" in text
    assert _is_png(run / "plots" / "eval_metrics.png")


def test_close_points_get_labels_that_do_not_overlap():
    """ASP and 2:4 runs land a hair apart on the accuracy-vs-speedup plot: their names must both stay readable."""
    from prunekit.report.plots import new_figure, separate_labels

    fig, (ax,) = new_figure(1, width=7.0, panel_height=4.5)
    xy = {"asp": (0.99, 0.8251), "nxm": (0.97, 0.8236), "l1": (0.96, 0.8290), "far": (2.1, 0.79)}
    ax.scatter([p[0] for p in xy.values()], [p[1] for p in xy.values()])
    ax.set_ylim(0.785, 0.85)
    labels = [ax.annotate(k, p, textcoords="offset points", xytext=(5, 5)) for k, p in xy.items()]
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    before = [t.get_window_extent(renderer) for t in labels]
    assert before[0].overlaps(before[1])  # the case this is for
    separate_labels(labels)
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(4) for j in range(i + 1, 4))
    assert labels[3].xyann == (5, 5)  # a label with room is left where it was
    assert boxes[0].y0 > boxes[1].y0  # order kept: the higher point's label stays above
