"""Run a benchmark suite (benchmarks/suites/SUITE.yaml) through the public CLI: its dense run, then every run.

A suite is data: the model, data, the dense fine-tune, the train settings its runs share, the runs (name -> the
recipe's method / distill / ... sections; a `search` section makes a NAS run), the seeds, a `quick:` block (the
small plumbing budget of `--quick`) and `at`, the speedup `prunekit compare` names the best run at. This driver
turns each run into a recipe in OUT/recipes/NAME.yaml (so every number has one), runs it with `prunekit prune`
(or `prunekit search` + `prunekit extract`) into OUT/NAME, skipping finished runs and resuming interrupted ones;
a run that fails is reported and the suite goes on. Then `prunekit compare` into OUT/compare and the spread of
the test metric over the seeds. Every run benchmarks itself against the dense model, so run nothing else meanwhile.

Any suite key can be changed with `--set key.path=value` (a YAML value), e.g. `--set sparsity=0.7`,
`--set data.max_train_examples=2000`, `--set pruned.epochs=1`, `--set start=runs/nxm/rt/dense` (start from an
existing dense run), `--set rebench=true` (re-measure every run's latency at the end, one after another).

    python benchmarks/run.py minilm-rt --out runs/side/minilm-rt
    python benchmarks/run.py minilm-rt --out runs/side/quick --quick      # ~15 min on 2 cores: plumbing
    python benchmarks/run.py smollm2-enwiki --out runs/side/smollm2-enwiki --seeds 0,1,2 --only l1,neuroprune
    python benchmarks/run.py neuroprune --out runs/neuroprune/rt --set start=runs/nxm/rt/dense --dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

SUITES = Path(__file__).resolve().parent / "suites"
# keys of a run entry that are instructions to this driver, not sections of its recipe
DRIVER_KEYS = ("each", "runs", "extract")
TEMPLATE = re.compile(r"\$\{([^}:]+)(?::([^}]+))?\}")  # ${expression} or ${expression:format spec}


class NotReady(Exception):
    """A recipe needs a measurement of a run that has not finished (e.g. MLPruning's kept fraction)."""


# ---------------------------------------------------------------------------------------------------- the suite


def merge(base: Any, over: Any) -> Any:
    """`over` deep-merged into `base` (mappings key by key, anything else replaced); inputs are left untouched."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if key in base else value
    return out


def read_suite(name: str) -> dict[str, Any]:
    """A suite file (a name in benchmarks/suites/ or a path) over the files its `base:` names, nearest last."""
    path = Path(name) if name.endswith((".yaml", ".yml")) or "/" in name else SUITES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITES.glob("[!_]*.yaml")))
        raise SystemExit(f"no suite '{name}' (looked for {path}); suites: {known}")
    suite = yaml.safe_load(path.read_text()) or {}
    base = suite.pop("base", None)
    return merge(read_suite(str(path.parent / f"{base}.yaml")), suite) if base else suite


def set_key(suite: dict[str, Any], assignment: str) -> None:
    """`--set key.path=value`: the value parsed as YAML, missing mappings on the way created."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {assignment}: give key.path=value")
    *parents, last = key.split(".")
    node = suite
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SystemExit(f"--set {assignment}: '{part}' is not a mapping")
    node[last] = yaml.safe_load(value)


def load(name: str, quick: bool, sets: list[str]) -> dict[str, Any]:
    """The suite as it runs: its file(s), then its `quick:` block if asked, then every `--set`."""
    suite = read_suite(name)
    quick_block = suite.pop("quick", {}) or {}
    if quick:
        suite = merge(suite, quick_block)
    for assignment in sets:
        set_key(suite, assignment)
    return suite


# ------------------------------------------------------------------------------------------------- templating


class Scope(Mapping[str, Any]):
    """The names a `${...}` template sees: the suite's keys (resolved on first use), the run's own values
    (`train_seed`, `start`, the `each` variables) and a few functions."""

    def __init__(self, suite: dict[str, Any], values: dict[str, Any], functions: dict[str, Callable]) -> None:
        self.suite, self.values, self.functions = suite, values, functions
        self.resolving: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        if key in self.functions:
            return self.functions[key]
        if key not in self.suite:
            raise KeyError(key)
        if key in self.resolving:
            raise SystemExit(f"suite key '{key}' refers to itself")
        self.resolving.add(key)
        try:
            return resolve(self.suite[key], self)
        finally:
            self.resolving.discard(key)

    def __iter__(self) -> Iterator[str]:
        return iter({**self.suite, **self.functions, **self.values})

    def __len__(self) -> int:
        return len({**self.suite, **self.functions, **self.values})

    def with_values(self, **values: Any) -> Scope:
        return Scope(self.suite, {**self.values, **values}, self.functions)


def evaluate(expr: str, scope: Scope) -> Any:
    try:
        return eval(expr, {"__builtins__": {}}, scope)  # noqa: S307  (the suite files of this repository)
    except NameError as exc:
        raise SystemExit(f"${{{expr}}}: {exc}") from exc


def resolve(value: Any, scope: Scope) -> Any:
    """`value` with its templates filled in: a string that is one `${expr}` becomes the expression's value
    (a number stays a number), `${expr}` inside a longer string its text."""
    if isinstance(value, dict):
        return {resolve(k, scope): resolve(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = TEMPLATE.fullmatch(value)
    if whole and not whole.group(2):
        return evaluate(whole.group(1), scope)
    return TEMPLATE.sub(lambda m: format(evaluate(m.group(1), scope), m.group(2) or ""), value)


def manifest(run_dir: Path) -> dict[str, Any]:
    """A finished run's prunekit.json (the public file; NotReady while the run has not finished)."""
    path = run_dir / "prunekit.json"
    if not path.exists():
        raise NotReady(f"needs the finished run {run_dir}")
    return json.loads(path.read_text())


def functions(out: Path) -> dict[str, Callable]:
    """What templates may call: arithmetic helpers, and `kept(RUN)`, the non-zero block weights a finished run
    kept of the dense model's (from its own benchmark), for runs that aim at what another one measurably kept."""

    def kept(name: str) -> float:
        return float(manifest(out / name)["bench"]["params"]["ratio"]["blocks_nonzero"])

    def pct(x: float) -> int:
        return round(x * 100)

    return {"round": round, "min": min, "max": max, "abs": abs, "pct": pct, "kept": kept}


# ------------------------------------------------------------------------------------------------------- runs


def expand(runs: dict[str, Any], scope: Scope, only: list[str] | None) -> Iterator[tuple[str, dict, Scope]]:
    """(raw name, entry, scope) of every run in order: an entry with `each: {var: list}` is one run per value
    (per combination, the first variable outermost), with `runs:` a group of runs per value. `only` keeps the
    entries (or groups) whose name, or whose expanded name, it lists."""
    for label, entry in runs.items():
        entry = entry or {}
        each = entry.get("each") or {}
        lists = [scope[v] if isinstance(v, str) and "${" not in v else resolve(v, scope) for v in each.values()]
        for combo in itertools.product(*lists):
            inner = scope.with_values(**dict(zip(each, combo, strict=True)))
            if "runs" in entry:
                keep = None if only is None or label in only else only
                yield from expand(entry["runs"], inner, keep)
                continue
            name = resolve(label, inner)
            if only is None or {label, name, re.sub(r"-\d+$", "", name)} & set(only):
                yield name, entry, inner


def train_section(partial: dict[str, Any], scope: Scope, seed: int) -> dict[str, Any]:
    """A recipe's train (or finetune) section: the entry's keys (epochs, lr), then the shared ones, then the seed."""
    return {**resolve(partial, scope), **resolve(scope.suite.get("train") or {}, scope), "seed": seed}


def recipe(entry: dict[str, Any], scope: Scope, seed: int) -> dict[str, Any]:
    """A run's recipe: model (the dense run unless the entry names one), data, train (the suite's `pruned` train
    settings, the entry's `train` over them), the suite's `recipe` sections, then the entry's own sections."""
    entry = {k: v for k, v in entry.items() if k not in DRIVER_KEYS}
    own = {k: v for k, v in entry.items() if k not in ("model", "train", "finetune")}
    out: dict[str, Any] = {"model": resolve(entry.get("model", "${start}"), scope), "data": scope["data"]}
    if "finetune" in entry:  # a NAS search fine-tunes the model itself, with the suite's seed
        out["finetune"] = train_section(entry["finetune"], scope, scope["seed"])
    out["train"] = merge(
        train_section(scope.suite.get("pruned") or {}, scope, seed), resolve(entry.get("train") or {}, scope)
    )
    if out["model"] is None:
        raise SystemExit("a run has no model: give the suite a `dense` run, a `start` directory or the run a `model`")
    return out | (scope.get("recipe") or {}) | resolve(own, scope)


def dense_recipe(scope: Scope) -> dict[str, Any]:
    """The dense fine-tune every run of the suite starts from (not benchmarked: it is the reference)."""
    train = train_section(scope.suite["dense"], scope, scope["seed"])
    return {"model": scope["model"], "data": scope["data"], "train": train, "method": {"name": "dense"},
            "bench": {"enabled": False}}  # fmt: skip


# -------------------------------------------------------------------------------------------------- execution


class Driver:
    """Writes recipes and runs the public CLI on them (or, dry, prints what it would run)."""

    def __init__(self, out: Path, progress: bool, dry: bool) -> None:
        self.out, self.progress, self.dry = out, progress, dry

    def prunekit(self, *args: str, capture: bool = False) -> str:
        """`prunekit ARGS` in this interpreter (failing loudly); its stdout when `capture`."""
        print("== prunekit " + " ".join(args), flush=True)
        if self.dry:
            return ""
        cmd = [sys.executable, "-m", "prunekit.cli", *args]
        return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None).stdout or ""

    def write(self, name: str, recipe: dict[str, Any]) -> Path:
        path = self.out / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    def done(self, name: str) -> bool:
        return (self.out / name / "prunekit.json").exists()

    def prune(self, name: str, recipe: dict[str, Any]) -> None:
        """`prunekit prune OUT/recipes/NAME.yaml --out OUT/NAME`; the recipe is written first so every number has
        one; a finished run is skipped, an interrupted one resumed."""
        path = self.write(name, recipe)
        if self.done(name):
            print(f"== {name}: done already ({self.out / name})", flush=True)
            return
        partial = (self.out / f".{name}.partial").exists()
        flags = (["--resume"] if partial else []) + ([] if self.progress else ["--no-progress"])
        self.prunekit("prune", str(path), "--out", str(self.out / name), *flags)

    def search(self, name: str, recipe: dict[str, Any], extract: dict[str, dict[str, Any]]) -> list[str]:
        """`prunekit search` into OUT/NAME-search, then `prunekit extract` into OUT/RUN of the Pareto point with
        the most block parameters at or under each rule's `block_params`; returns the runs it failed to make."""
        if extract and all(self.done(run) for run in extract):
            print(f"== {name}: done already", flush=True)
            return []
        path = self.write(name, recipe)
        search = self.out / f"{name}-search"
        if not (search / "pareto.json").exists():
            again = "--resume" if (self.out / f".{search.name}.partial").exists() else "--overwrite"
            self.prunekit("search", str(path), "--out", str(search), "--no-progress", again)
        summary = None if self.dry else json.loads((search / "pareto.json").read_text())
        failed = []
        for run, rule in extract.items():
            if self.done(run):
                print(f"== {run}: done already ({self.out / run})", flush=True)
                continue
            target = float(rule["block_params"])
            finetune = [] if not rule.get("finetune_epochs") else ["--finetune-epochs", str(rule["finetune_epochs"])]
            if summary is None:  # dry: the point is only known after the search
                index = f"<point at or under {target:.4g} of the block parameters>"
            else:
                under = [p for p in summary["points"] if p["block_params"] <= target + 1e-9]
                if not under:
                    failed.append(f"{run} (no Pareto point at or under {target:.0%} of the block parameters)")
                    continue
                point = max(under, key=lambda p: p["block_params"])
                index = str(point["index"])
                print(f"== {run}: point {index}, block parameters {point['block_params']:.3f}, parameters "
                      f"{point['objectives'][1]:.3f}", flush=True)  # fmt: skip
            self.prunekit("extract", str(search), index, str(self.out / run), "--no-progress", "--overwrite", *finetune)
        if summary is not None:
            print(search_report(summary), flush=True)
        return failed


def search_report(summary: dict[str, Any]) -> str:
    """A search's front and baselines' hypervolumes, its stage wall times beside the dense fine-tune's."""
    key, t = summary["metric"], summary.get("timings", {})
    hv = summary.get("baseline_hypervolume", {})
    ratio = (t.get("reorder_s", 0) + t.get("supernet_s", 0) + t.get("search_s", 0)) / t["finetune_s"] if t.get(
        "finetune_s") else None  # fmt: skip
    return "\n".join([
        f"front: {len(summary['points'])} points from {summary['evaluations']} evaluations; hypervolume "
        f"{summary['hypervolume']:.4f}; baselines: " + ", ".join(f"{k} {v:.4f}" for k, v in hv.items()),
        "wall time (min): " + ", ".join(f"{k.removesuffix('_s')} {v / 60:.1f}" for k, v in t.items())
        + (f"; stage 1 + 2 / dense fine-tune = {ratio:.1f}x" if ratio else ""),
        f"dense test {key} {summary['dense']['test'][key]:.4f}",
    ])  # fmt: skip


def test_metric(run_dir: Path) -> float | None:
    m = manifest(run_dir)
    return (m.get("metrics") or {}).get("test", {}).get((m.get("task") or {}).get("main_metric", "accuracy"))


def seed_summary(run_dirs: list[Path]) -> str:
    """Mean and spread of the test metric per variant over its seeds (run names `NAME` and `NAME-sN`)."""
    by_variant: dict[str, list[float]] = {}
    for run_dir in run_dirs:
        value = test_metric(run_dir)
        if value is not None:
            by_variant.setdefault(re.sub(r"-s\d+$", "", run_dir.name), []).append(value)
    lines = ["| variant | seeds | test mean | min | max |", "|---|---:|---:|---:|---:|"]
    for name, values in by_variant.items():
        mean = sum(values) / len(values)
        lines.append(f"| {name} | {len(values)} | {mean:.4f} | {min(values):.4f} | {max(values):.4f} |")
    return "\n".join(lines)


def rebench(driver: Driver, run_dirs: list[Path]) -> str:
    """Every run's latency again, one after another on a quiet machine (`prunekit bench`: a block-pruned run is
    loaded back into the block-sparse kernel where it is timed faster), as one markdown table."""
    lines = ["| run | test | block params kept | non-zero block weights | FLOPs | speedup b1 | speedup b32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for run_dir in run_dirs:
        measured = driver.prunekit("bench", str(run_dir), "--batch", "1", "--batch", "32", "--seq", "128", "--json",
                                   capture=True)  # fmt: skip
        if driver.dry:
            continue
        b = json.loads(measured)
        ratio, speed = b["params"]["ratio"], {r["batch"]: r["speedup"] for r in b["latency"]}
        cells = [run_dir.name, f"{test_metric(run_dir):.4f}", f"{ratio['blocks']:.1%}",
                 f"{ratio['blocks_nonzero']:.1%}", f"{b['flops_per_token'][0]['ratio']['total']:.2f}",
                 f"{speed.get(1, 0):.2f}x", f"{speed.get(32, 0):.2f}x"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_suite(suite: dict[str, Any], out: Path, progress: bool, dry: bool, only: list[str] | None) -> list[str]:
    """The dense run, every run per training seed, compare and the seed summary; returns the failed runs."""
    driver = Driver(out, progress, dry)
    if suite.get("description"):
        print(f"== {suite['description']}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    scope = Scope(suite, {}, functions(out))
    own_dense = suite.get("dense") is not None and not suite.get("start")
    start = str(out / "dense") if own_dense else suite.get("start")
    names, failed = [], []
    if own_dense:  # every run starts from it: a failure here ends the suite
        driver.prune("dense", dense_recipe(scope))
        names.append("dense")
    seed = scope["seed"]
    for train_seed in scope.get("seeds") or [seed]:
        tag = "" if train_seed == seed else f"-s{train_seed}"
        for raw, entry, inner in expand(suite.get("runs") or {}, scope.with_values(start=start), only):
            name = raw + tag
            inner = inner.with_values(train_seed=train_seed, run=raw)  # `run`: the name before the seed tag
            try:
                r = recipe(entry, inner, train_seed)
                if "search" in r:
                    rules = (entry.get("extract") or {}).items()
                    extract = {resolve(run, inner) + tag: resolve(rule, inner) for run, rule in rules}
                    names += extract
                    failed += driver.search(name, r, extract)
                else:
                    names.append(name)
                    driver.prune(name, r)
            except NotReady as exc:
                print(f"== {name}: not written: its recipe {exc}", flush=True)
                if not dry:
                    failed.append(f"{name} (its recipe {exc})")
            except subprocess.CalledProcessError as exc:
                failed.append(f"{name} (exit {exc.returncode})")
    done = [out / n for n in names if dry or driver.done(n)]
    at = scope.get("at")
    if done:
        if not dry:
            shutil.rmtree(out / "compare", ignore_errors=True)
        try:
            driver.prunekit(
                "compare", *map(str, done), "--out", str(out / "compare"), *(["--at", str(at)] if at else [])
            )
        except subprocess.CalledProcessError as exc:
            failed.append(f"compare (exit {exc.returncode})")
    pruned = [d for d in done if d.name != "dense"]
    if not dry:
        print(seed_summary(pruned))
    for note in scope.get("notes") or []:
        with contextlib.suppress(NotReady):  # a note on a run that did not finish is left out
            print(resolve(note, scope), flush=True)
    if scope.get("rebench"):
        table = rebench(driver, pruned)
        if not dry:
            print(table)
    if failed:
        print("failed: " + "; ".join(failed), flush=True)
    return failed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="a name in benchmarks/suites/ (" + ", ".join(
        sorted(p.stem for p in SUITES.glob("[!_]*.yaml"))) + ") or a suite file")  # fmt: skip
    ap.add_argument("--out", help="folder of the suite's runs (default: runs/bench/SUITE)")
    ap.add_argument("--quick", action="store_true", help="the suite's `quick:` budget: plumbing, not results")
    ap.add_argument("--seeds", help="training seeds of the runs, e.g. 0,1,2 (a run of seed N is NAME-sN)")
    ap.add_argument(
        "--only", help="only these runs (names, or names before -NN), e.g. l1,nas (the dense run is always made)"
    )
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a suite key (a YAML value), e.g. sparsity=0.7 or data.max_train_examples=2000",
    )
    ap.add_argument("--dry-run", action="store_true", help="write the recipes and print the commands, run nothing")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    suite = load(args.suite, args.quick, args.sets)
    if args.seeds:
        suite["seeds"] = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or f"runs/bench/{Path(args.suite).stem}")
    only = args.only.split(",") if args.only else None
    run_suite(suite, out, args.progress, args.dry_run, only)


if __name__ == "__main__":
    main()
