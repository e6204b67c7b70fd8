"""What every method suite shares: run a recipe as `prunekit prune` (skipping finished runs, resuming interrupted
ones), then `prunekit compare` over the finished runs and the per-variant spread of the test metric over seeds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def run(name: str, recipe: dict, out: Path, progress: bool) -> None:
    """`prunekit prune OUT/recipes/NAME.yaml --out OUT/NAME`; the recipe is written first so every number has one."""
    run_dir = out / name
    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if (run_dir / "prunekit.json").exists():
        print(f"== {name}: done already ({run_dir})", flush=True)
        return
    cmd = [sys.executable, "-m", "prunekit.cli", "prune", str(path), "--out", str(run_dir)]
    if (out / f".{name}.partial").exists():
        cmd.append("--resume")
    if not progress:
        cmd.append("--no-progress")
    print("== " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def compare(out: Path, names: list[str]) -> list[str]:
    """`prunekit compare` of the finished runs into OUT/compare; returns their directories."""
    done = [str(out / n) for n in names if (out / n / "prunekit.json").exists()]
    cmp_dir = out / "compare"
    shutil.rmtree(cmp_dir, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "prunekit.cli", "compare", *done, "--out", str(cmp_dir)], check=True)
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
