"""`prunekit search` killed mid super-network or mid search resumes with --resume to the same Pareto set as an
uninterrupted search (the kills come from the PRUNEKIT_FAULT_AT test hook: SIGKILL, no cleanup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_fixtures import sentiment_csv, tiny_bert_dir

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # same threads in every process: same numerics


def _search(recipe: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV, PRUNEKIT_FAULT_AT=fault) if fault else ENV
    cmd = [sys.executable, "-m", "prunekit.cli", "search", str(recipe), "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search-resume")
    path = root / "nas.yaml"
    path.write_text(
        f"model: {tiny_bert_dir(root)}\n"
        f"data: {{dataset: {sentiment_csv(root)}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "finetune: {epochs: 1, batch_size: 16, lr: 1.0e-2, max_length: 16, checkpoint_every: 4}\n"  # 12 steps
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 4}\n"  # 12 steps
        "method: {name: nas, space: medium, strategy: sandwich, importance_examples: 32}\n"
        "bench: {enabled: false}\n"
        "search: {searcher: local, budget: 8, objective: params, baselines: []}\n"
    )
    return path


@pytest.fixture(scope="module")
def reference(recipe) -> dict:
    out = recipe.parent / "reference"
    proc = _search(recipe, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "pareto.json").read_text())


def _front(pareto: dict) -> list:
    keys = ("config", "objectives", "validation", "test", "block_params")
    return [{k: p[k] for k in keys} for p in pareto["points"]]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["step:18", "search:3"])  # mid super-network (its step 6 of 12); mid search
def test_killed_search_resumes_to_the_same_pareto_set(tmp_path, recipe, reference, fault):
    out = tmp_path / "search"
    killed = _search(recipe, out, fault=fault)
    assert killed.returncode != 0 and not out.exists()
    partial = tmp_path / ".search.partial"
    assert partial.is_dir()
    again = _search(recipe, out)  # neither --resume nor --overwrite: refused, the partial search kept
    assert again.returncode == 2 and "--resume" in again.stderr and partial.is_dir()
    resumed = _search(recipe, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if fault.startswith("search"):
        assert "reusing the one the interrupted search trained" in resumed.stderr
    else:
        assert "supernet: resuming at step" in resumed.stderr
    pareto = json.loads((out / "pareto.json").read_text())
    assert _front(pareto) == _front(reference)
    assert pareto["hypervolume"] == reference["hypervolume"]
    assert not partial.exists() and not [p for p in out.iterdir() if "tmp" in p.name]
