"""One-shot structured pruning (`method: structured`): scored on calibration data, compacted before training, the
recovery trains the small model with the dense teacher; a killed run resumes to the same weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prunekit.masks import maskset_from_state
from prunekit.methods.base import create_method
from train_fixtures import sentiment_csv, tiny_bert_dir

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _prune(recipe: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV, PRUNEKIT_FAULT_AT=fault) if fault else ENV
    cmd = [sys.executable, "-m", "prunekit.cli", "prune", str(recipe), "--out", str(out), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("structured")
    path = root / "structured.yaml"
    path.write_text(
        f"model: {tiny_bert_dir(root)}\n"
        f"data: {{dataset: {sentiment_csv(root, n=120)}, task: classification, "
        "columns: {text: review, label: verdict}}\n"
        "finetune: {epochs: 1, batch_size: 16, lr: 1.0e-2, max_length: 16, checkpoint_every: 3}\n"
        "train: {epochs: 2, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 3}\n"
        "method: {name: structured, criterion: taylor, heads: 0.5, neurons: 0.5, calibration_examples: 48}\n"
        "distill: {teacher: dense, alpha: 0.5}\n"
        "bench: {enabled: false}\n"
    )
    return path


@pytest.fixture(scope="module")
def reference(recipe) -> Path:
    out = recipe.parent / "reference"
    proc = _prune(recipe, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_one_shot_prunes_before_training_and_recovers_the_small_model(reference):
    manifest = json.loads((reference / "prunekit.json").read_text())
    assert [(layer["heads"], layer["ffn_width"]) for layer in manifest["structure"]] == [(2, 32), (2, 32)]
    assert manifest["method_report"] == {"criterion": "taylor", "calibration_batches": 3}  # 48 examples / 16
    assert manifest["timings"]["calibrate_s"] > 0
    assert manifest["sparsity"]["mask"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    records = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r.get("stage") == "prune" and r.get("type") == "train"]
    assert trained and all("kd" in " ".join(r) for r in trained[:1])  # the recovery distils from the dense model
    dense = load_file(reference / "dense" / "model.safetensors")
    small = load_file(reference / "model.safetensors")
    key = "bert.encoder.layer.0.intermediate.dense.weight"
    assert dense[key].shape[0] == 64 and small[key].shape[0] == 32  # trained and saved at the compacted width


def test_a_killed_one_shot_run_resumes_to_the_same_weights(tmp_path, recipe, reference):
    out = tmp_path / "run"
    killed = _prune(recipe, out, fault="step:10")  # prune stage (6 fine-tune steps first), after a checkpoint
    assert killed.returncode != 0 and not out.exists()
    resumed = _prune(recipe, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_is_validated():
    with pytest.raises(Exception, match="criterion"):
        create_method("structured", {"criterion": "random"})
    with pytest.raises(Exception, match="scope"):
        create_method("structured", {"scope": "model"})
    assert create_method("structured").calibration_examples() == 512


def test_repair_runs_between_compaction_and_recovery(recipe):
    out = recipe.parent / "repaired"
    proc = _prune(recipe, out, "--set", "method.repair=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "prunekit.json").read_text())["method_report"]
    assert report["repair"]["mse_after"] < report["repair"]["mse_before"]


def test_a_latency_budget_run_meets_its_prediction_and_resumes_with_the_units_it_chose(tmp_path, recipe):
    costs = tmp_path / "costs.json"  # as `prunekit costs` writes it on the target device
    curve = lambda saved: {"removed": [0, 0.25, 0.5, 0.75], "saved": [saved * f for f in (0, 0.25, 0.5, 0.75)]}  # noqa: E731
    costs.write_text(json.dumps({"dense_ms": 100.0, "heads": curve(40.0), "neurons": curve(50.0), "batch": 32,
                                 "seq_len": 128}))  # fmt: skip
    extra = ("--set", "method.scope=latency", "--set", "method.speedup=1.5", "--set", f"method.costs={costs}")
    out = tmp_path / "run"
    killed = _prune(recipe, out, *extra, fault="step:10")
    assert killed.returncode != 0 and not out.exists()
    chosen = maskset_from_state(torch.load(tmp_path / ".run.partial" / "one_shot_masks.pt", weights_only=True))
    resumed = _prune(recipe, out, *extra, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "chosen before the interruption" in resumed.stdout + resumed.stderr
    manifest = json.loads((out / "prunekit.json").read_text())
    kept = [(int(chosen.layers[i].heads.sum()), int(chosen.layers[i].neurons.sum())) for i in (0, 1)]
    assert [(layer["heads"], layer["ffn_width"]) for layer in manifest["structure"]] == kept
    latency = manifest["method_report"]["latency"]  # the report survives the resume (method state)
    assert 1.5 <= latency["predicted_speedup"] < 1.65 and latency["costs"]["dense_ms"] == 100.0


def test_sublayers_and_rows_are_dropped_by_score_and_the_run_saves_that_structure(tmp_path, recipe):
    out = tmp_path / "depth"
    proc = _prune(recipe, out, "--set", "method.sublayers=0.25", "--set", "method.rows=0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "prunekit.json").read_text())
    dropped = manifest["method_report"]["dropped_sublayers"]
    assert len(dropped) == 1  # a quarter of the 2 attention + 2 FFN sublayers
    layer, kind = dropped[0].split(".")
    entry = manifest["structure"][int(layer)]
    assert entry["attention" if kind == "attention" else "ffn"] == "dropped"
    hidden = 32  # tiny_bert_dir's hidden size: 24 of its 32 rows kept by every remaining sublayer
    rows = [e[k] for e in manifest["structure"] for k in ("attn_rows", "ffn_rows") if e.get(k) is not None]
    assert rows and all(r == hidden * 3 // 4 for r in rows)


def test_sublayers_and_rows_refuse_what_they_cannot_combine_with():
    with pytest.raises(Exception, match="scope latency"):
        create_method("structured", {"scope": "latency", "sublayers": 0.25})
    with pytest.raises(Exception, match="repair"):
        create_method("structured", {"repair": True, "rows": 0.25})


def _structure(out: Path) -> list[tuple[int, int]]:
    manifest = json.loads((out / "prunekit.json").read_text())
    return [(layer["heads"], layer["ffn_width"]) for layer in manifest["structure"]]


@pytest.fixture(scope="module")
def two_rounds(recipe) -> tuple[Path, subprocess.CompletedProcess]:
    out = recipe.parent / "two-rounds"
    proc = _prune(recipe, out, "--set", "method.rounds=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_rounds_cut_in_turn_and_end_at_the_one_shot_structure(two_rounds, reference):
    out, proc = two_rounds
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    removal = [r for r in records if r.get("stage") == "prune" and "removed_structure" in r]
    # the first cut (3 of 4 heads, 48 of 64 neurons) before training; the second, to 2 and 32, half way through
    assert [r["step"] for r in removal] == [6] and removal[0]["removed_structure"] == pytest.approx(1 / 3, abs=0.03)
    first = re.search(r"pruned ([0-9.]+)% of the block weights before training", proc.stderr)
    assert first and float(first.group(1)) == pytest.approx(25, abs=1)
    assert _structure(out) == _structure(reference) == [(2, 32), (2, 32)]
    manifest = json.loads((out / "prunekit.json").read_text())
    assert manifest["sparsity"]["mask"]["sparsity"] == pytest.approx(0.5, abs=0.02)  # of the dense model
    assert manifest["method_report"]["cuts_at_steps"] == [0, 6]
    small = load_file(out / "model.safetensors")["bert.encoder.layer.0.intermediate.dense.weight"]
    assert small.shape[0] == 32


def test_a_run_killed_between_cuts_resumes_to_the_same_weights(tmp_path, recipe, two_rounds):
    out = tmp_path / "run"
    killed = _prune(recipe, out, "--set", "method.rounds=2", fault="step:10")  # prune step 4: before the 2nd cut
    assert killed.returncode != 0 and not out.exists()
    resumed = _prune(recipe, out, "--set", "method.rounds=2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(two_rounds[0] / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rounds_refuse_what_they_cannot_combine_with():
    for other in ({"scope": "global"}, {"repair": True}, {"rows": 0.25}):
        with pytest.raises(Exception, match="rounds"):
            create_method("structured", {"rounds": 2, **other})
