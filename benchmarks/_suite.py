"""What every method suite shares: the data section and training settings its recipes have in common, the dense
run they start from, `prunekit prune` of a recipe (skipping finished runs, resuming interrupted ones), then
`prunekit compare` over the finished runs and the per-variant spread of the test metric over seeds."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# MLPruning's distillation (METHODS.md 3e: logits, hidden states, attention) from the suite's dense run; shared by
# every suite that runs MLPruning so their numbers come from one setting
KD_MLPRUNING = {"teacher": "dense", "alpha": 0.9, "temperature": 2.0, "hidden_weight": 1.0, "attention_weight": 1.0}


def suite_parser(doc: str, epochs_help: str) -> argparse.ArgumentParser:
    """The arguments a suite that starts from one dense run shares: data, model, the dense start, budget."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--dataset", default="rotten_tomatoes")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--dense", default=None, help="a dense fine-tuned run directory to start from (else one is made)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=4000)
    ap.add_argument("--max-examples", type=int, default=None, help="cap on every split but the training one")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--dense-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help=epochs_help)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--dense-lr", type=float, default=1e-4, help="learning rate of the dense fine-tune")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch of every run (4 suits SmolLM2 on CPU)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def data_and_common(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipes' data section (seeded, training cap, optional cap on the other splits) and shared train keys."""
    data: dict[str, Any] = {"dataset": args.dataset, "seed": args.seed, "max_train_examples": args.max_train}
    if args.max_examples:
        data["max_examples"] = args.max_examples
    return data, {"batch_size": getattr(args, "batch_size", 32), "max_length": args.max_length, "seed": args.seed}


def dense_recipe(args: argparse.Namespace, data: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """The dense fine-tune every pruned run of a suite starts from (not benchmarked: it is the reference)."""
    train = {"epochs": args.dense_epochs, "lr": getattr(args, "dense_lr", 1e-4), **common}
    return {"model": args.model, "data": data, "train": train, "method": {"name": "dense"}, "bench": {"enabled": False}}


def prunekit(*args: str, capture: bool = False) -> str:
    """Run `prunekit ARGS` in this interpreter (failing loudly); its stdout when `capture`."""
    cmd = [sys.executable, "-m", "prunekit.cli", *args]
    print("== prunekit " + " ".join(args), flush=True)
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None).stdout or ""


def run(name: str, recipe: dict, out: Path, progress: bool) -> None:
    """`prunekit prune OUT/recipes/NAME.yaml --out OUT/NAME`; the recipe is written first so every number has one."""
    run_dir = out / name
    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if (run_dir / "prunekit.json").exists():
        print(f"== {name}: done already ({run_dir})", flush=True)
        return
    flags = (["--resume"] if (out / f".{name}.partial").exists() else []) + ([] if progress else ["--no-progress"])
    prunekit("prune", str(path), "--out", str(run_dir), *flags)


def compare(out: Path, names: list[str], at: float | None = None) -> list[str]:
    """`prunekit compare` of the finished runs into OUT/compare (naming the best at speedup `at`); returns their
    directories."""
    done = [str(out / n) for n in names if (out / n / "prunekit.json").exists()]
    cmp_dir = out / "compare"
    shutil.rmtree(cmp_dir, ignore_errors=True)
    prunekit("compare", *done, "--out", str(cmp_dir), *(["--at", str(at)] if at else []))
    return done


def seed_summary(run_dirs: list[str]) -> str:
    """Mean and spread of the test metric per variant over its seeds (run names `NAME` and `NAME-sN`)."""
    from prunekit.io import read_manifest

    by_variant: dict[str, list[float]] = {}
    for run_dir in run_dirs:
        m = read_manifest(run_dir)
        key = (m.task or {}).get("main_metric", "accuracy")
        value = m.metrics.get("test", {}).get(key)
        if value is not None:
            by_variant.setdefault(Path(run_dir).name.split("-s")[0], []).append(value)
    lines = ["| variant | seeds | test mean | min | max |", "|---|---:|---:|---:|---:|"]
    for name, values in by_variant.items():
        mean = sum(values) / len(values)
        lines.append(f"| {name} | {len(values)} | {mean:.4f} | {min(values):.4f} | {max(values):.4f} |")
    return "\n".join(lines)
