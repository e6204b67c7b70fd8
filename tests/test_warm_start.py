"""Learned scores started from data importance (`score_from`): movement and MLPruning begin with the units in the
order one pass of calibration data gives, and the pipeline calibrates them before training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prunekit.importance import sublayer_scores, unit_scores
from prunekit.importance.warm_start import data_unit_scores, rank_init
from prunekit.methods.base import create_method
from prunekit.topology import describe
from test_importance import _batches
from tiny import tiny_model
from train_fixtures import sentiment_csv, tiny_bert_dir


def test_rank_init_keeps_the_order_on_an_even_scale():
    s = torch.tensor([0.3, 1e-9, 5.0, 0.3])
    assert rank_init(s, 3.0).tolist() == [1.0, 0.0, 3.0, 2.0]  # ties broken by position, as Top-k breaks them
    assert rank_init(torch.tensor([7.0]), 2.0).tolist() == [0.0]


def test_data_unit_scores_are_the_importance_layers():
    model = tiny_model("llama")
    batches = _batches("llama")
    got = data_unit_scores(model, "taylor", batches)
    units, coarse = unit_scores(model, "taylor", batches), sublayer_scores(model, "taylor", batches)
    for i, s in units.heads.items():
        assert torch.equal(got[(i, "heads")], s) and torch.equal(got[(i, "neurons")], units.neurons[i])
        assert torch.equal(got[(i, "attn_rows")], coarse.rows[(i, "attention")])
        assert torch.equal(got[(i, "ffn_rows")], coarse.rows[(i, "ffn")])
    assert set(k[1] for k in data_unit_scores(model, "magnitude", None, ["neurons"])) == {"neurons"}
    with pytest.raises(ValueError, match="unknown unit kinds"):
        data_unit_scores(model, "magnitude", None, ["layers"])


def test_movement_starts_heads_and_neurons_in_the_data_order():
    model = tiny_model("bert")
    batches = _batches("bert")
    method = create_method("movement", {"pattern": ["head", "neuron"], "sparsity": 0.5, "score_from": "activation",
                                        "score_from_scale": 2.0})  # fmt: skip
    assert method.calibration_examples() == 512
    method.calibrate(model, batches)
    method.attach(model, describe(model))
    data = unit_scores(model, "activation", batches)
    for pattern, kind in (("head", "heads"), ("neuron", "neurons")):
        for _, layer, pm in method._entries[pattern]:
            expected = rank_init(getattr(data, kind)[layer], 2.0)
            assert torch.equal(pm.scores.detach(), expected)
    assert create_method("movement", {"pattern": "head"}).calibration_examples() == 0  # none: nothing to measure
    with pytest.raises(Exception, match="score_from"):
        create_method("movement", {"pattern": "unstructured", "score_from": "taylor"})


def test_mlpruning_starts_kv_heads_and_rows_in_the_data_order():
    model = tiny_model("llama")  # grouped-query attention: one MLPruning unit per KV head
    batches = _batches("llama")
    method = create_method("mlpruning", {"step": 1, "score_from": "taylor", "score_from_scale": 1.0})
    method.calibrate(model, batches)
    method.attach(model, describe(model))
    data = data_unit_scores(model, "taylor", batches)
    topo = describe(model)
    for (layer, key), unit in method._units.items():
        warm = data[(layer, key)]
        if key == "heads":
            warm = warm.view(topo.blocks[layer].attention.num_kv_heads, -1).sum(1)
        assert torch.equal(unit.scores.detach(), rank_init(warm, 1.0)), (layer, key)
    assert create_method("mlpruning", {"step": 2, "score_from": "taylor"}).calibration_examples() == 0


def test_a_movement_run_calibrates_before_training(tmp_path):
    recipe = tmp_path / "movement.yaml"
    recipe.write_text(
        f"model: {tiny_bert_dir(tmp_path)}\n"
        f"data: {{dataset: {sentiment_csv(tmp_path, n=80)}, task: classification, "
        "columns: {text: review, label: verdict}}\n"
        "finetune: {epochs: 1, batch_size: 16, lr: 1.0e-2, max_length: 16}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16}\n"
        "method: {name: movement, pattern: [head, neuron], sparsity: 0.5, score_from: taylor, "
        "calibration_examples: 32}\n"
        "bench: {enabled: false}\n"
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "prunekit.cli", "prune", str(recipe), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "prunekit.json").read_text())
    assert manifest["timings"]["calibrate_s"] > 0
    assert [(e["heads"], e["ffn_width"]) for e in manifest["structure"]] == [(2, 32), (2, 32)]
