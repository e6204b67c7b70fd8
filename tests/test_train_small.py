"""Gradual methods train small: once a structured schedule's masks are final, the trainer removes the pruned heads and
neurons and trains the rest of the stage on the smaller model; a run killed before or after that removal resumes to
the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import sentiment_csv, tiny_bert_dir

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
FINETUNE_STEPS = 6  # 96 training examples / 16: the fault counter counts the dense stage's steps first


def _prune(recipe: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV, PRUNEKIT_FAULT_AT=fault) if fault else ENV
    cmd = [sys.executable, "-m", "prunekit.cli", "prune", str(recipe), "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


METHODS = {
    "magnitude": "{name: magnitude, pattern: [head, neuron], sparsity: 0.5, scope: layer, start: 0.0, end: 0.5, "
    "update_every: 1}",
    "movement": "{name: movement, pattern: [head, neuron], sparsity: 0.5, start: 0.0, end: 0.5}",
}


@pytest.fixture(scope="module", params=sorted(METHODS))
def recipe(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"train_small_{request.param}")
    path = root / f"{request.param}.yaml"
    path.write_text(
        f"model: {tiny_bert_dir(root)}\n"
        f"data: {{dataset: {sentiment_csv(root, n=120)}, task: classification, "
        "columns: {text: review, label: verdict}}\n"
        "finetune: {epochs: 1, batch_size: 16, lr: 1.0e-2, max_length: 16, checkpoint_every: 3}\n"
        "train: {epochs: 2, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 3}\n"
        f"method: {METHODS[request.param]}\n"
        "distill: {teacher: dense, alpha: 0.5}\n"
        "bench: {enabled: false}\n"
    )
    return path


@pytest.fixture(scope="module")
def reference(recipe) -> tuple[Path, subprocess.CompletedProcess]:
    out = recipe.parent / "reference"
    proc = _prune(recipe, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_the_final_structure_is_removed_at_the_end_of_the_schedule_and_the_rest_trains_small(reference):
    out, proc = reference
    assert "removed the final heads / neurons at step 6" in proc.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    removal = [r for r in records if r.get("stage") == "prune" and "removed_structure" in r]
    assert [r["step"] for r in removal] == [6] and removal[0]["removed_structure"] == pytest.approx(0.5, abs=0.03)
    manifest = json.loads((out / "prunekit.json").read_text())
    assert [(layer["heads"], layer["ffn_width"]) for layer in manifest["structure"]] == [(2, 32), (2, 32)]
    assert manifest["sparsity"]["mask"]["sparsity"] == pytest.approx(0.5, abs=0.03)  # against the dense model
    assert manifest["sparsity"]["mask"]["params"] == manifest["sparsity"]["saved"]["params"]
    evals = [r for r in records if r.get("stage") == "prune" and r.get("type") == "eval"]
    assert evals[-1]["step"] == 12  # trained on after the removal, to the end of the stage


def test_train_small_off_trains_the_masked_full_model_to_the_same_structure(recipe, reference):
    out = recipe.parent / "full-width"
    proc = _prune(recipe, out, "--set", "method.train_small=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "removed the final heads" not in proc.stderr
    a = json.loads((out / "prunekit.json").read_text())["structure"]
    b = json.loads((reference[0] / "prunekit.json").read_text())["structure"]
    assert a == b


@pytest.mark.slow
@pytest.mark.parametrize(("prune_step", "when"), [(8, "after"), (5, "before")])
def test_a_run_killed_before_or_after_the_removal_resumes_to_the_same_weights(tmp_path, recipe, reference,
                                                                             prune_step, when):  # fmt: skip
    if when == "before" and recipe.stem != "magnitude":
        return  # the trainer's replay is the same for every method: one method is enough before the removal
    out = tmp_path / "run"
    killed = _prune(recipe, out, fault=f"step:{FINETUNE_STEPS + prune_step}")
    assert killed.returncode != 0 and not out.exists()
    assert ("removed the final heads" in killed.stderr) == (when == "after")
    resumed = _prune(recipe, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_weights(reference[0], out)
