"""Wanda: the score is |W| times the input feature's norm over real tokens, each row (or N:M group) keeps its top
share, a large input rescues small weights that magnitude would drop, and a one-shot run keeps the zeros."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.importance.wanda import input_norms, row_masks, wanda_masks, wanda_scores
from prunekit.methods.base import create_method
from prunekit.runs.io import load, read_manifest
from prunekit.topology import describe, get_module, weight_view
from tiny import tiny_inputs, tiny_model
from train_fixtures import sentiment_csv, tiny_bert_dir


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_input_norms_are_the_real_tokens_feature_norms(family):
    model = tiny_model(family).eval()
    names = describe(model).prunable_linears()
    batch = tiny_inputs(family)  # the second row has two padding positions
    seen: dict[str, torch.Tensor] = {}
    handles = [get_module(model, n).register_forward_pre_hook(
        lambda m, a, n=n: seen.__setitem__(n, a[0].detach())) for n in names]  # fmt: skip
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    norms, tokens = input_norms(model, names, [batch])
    real = batch["attention_mask"].bool()
    assert tokens == int(real.sum())
    for n in names:
        x = seen[n][real]  # (real tokens, in)
        torch.testing.assert_close(norms[n], x.norm(dim=0), rtol=1e-4, atol=1e-6)


def test_rows_keep_their_top_share_and_nm_groups_their_top_n():
    scores = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    keep = row_masks(scores, 0.75)
    assert keep.sum(1).tolist() == [4] * 6
    for r in range(6):
        assert scores[r][keep[r]].min() > scores[r][~keep[r]].max()
    nm = wanda_masks({"w": scores}, None, (2, 4))["w"]
    assert nm.reshape(6, 4, 4).sum(-1).eq(2).all()


def test_a_large_input_feature_keeps_its_small_weights():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 1.0, 1.0, 1.0], [0.1, 1.0, 1.0, 1.0]]))
    model = nn.Sequential(lin)
    x = torch.tensor([[100.0, 1.0, 1.0, 1.0]])
    norms = {"0": x.norm(dim=0)}
    keep = wanda_masks(wanda_scores(model, norms), 0.5, None)["0"]
    assert keep[:, 0].all()  # magnitude alone would drop column 0 first
    assert not row_masks(lin.weight.abs(), 0.5)[:, 0].any()


def test_method_masks_every_block_linear_once():
    model = tiny_model("llama").eval()
    method = create_method("wanda", {"sparsity": 0.5, "calibration_examples": 4})
    method.calibrate(model, [tiny_inputs("llama"), tiny_inputs("llama", seed=1)])
    masks = method.prune_before_training()
    names = describe(model).prunable_linears()
    assert sorted(masks.weights) == sorted(names) and set(masks.patterns.values()) == {"unstructured"}
    for n in names:
        w = weight_view(get_module(model, n))
        assert masks.weights[n].shape == w.shape and masks.weights[n].sum(1).eq(w.shape[1] // 2).all()


def test_magnitude_score_reads_no_data_and_keeps_the_largest_weights():
    model = tiny_model("bert").eval()
    method = create_method("wanda", {"score": "magnitude", "sparsity": 0.5})
    method.calibrate(model, iter(()))  # no batches needed
    masks = method.prune_before_training()
    for n, keep in masks.weights.items():
        torch.testing.assert_close(keep, row_masks(weight_view(get_module(model, n)).abs(), 0.5))


def test_refuses_structured_patterns():
    with pytest.raises(UsageError, match="unstructured or N:M"):
        create_method("wanda", {"pattern": "head"})


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_one_shot_run_keeps_the_zeros(tmp_path, pattern):
    recipe = tmp_path / "w.yaml"
    recipe.write_text(
        f"model: {tiny_bert_dir(tmp_path)}\n"
        f"data: {{dataset: {sentiment_csv(tmp_path)}, task: classification, "
        "columns: {text: review, label: verdict}}\n"
        "finetune: {epochs: 2, batch_size: 16, lr: 1.0e-2, max_length: 16}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16}\n"
        f"method: {{name: wanda, sparsity: 0.5, pattern: '{pattern}', calibration_examples: 32}}\n"
        "bench: {enabled: false}\n"
    )
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "prunekit.cli", "prune", str(recipe), "--out", str(out),
                           "--no-progress", "--json"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    model = load(out, block_sparse="never")
    for n in describe(model).prunable_linears():  # the recovery epoch kept exactly half of every row zero
        w = weight_view(get_module(model, n))
        if pattern == "2:4":
            assert w.ne(0).reshape(w.shape[0], -1, 4).sum(-1).le(2).all()
        else:
            assert w.ne(0).sum(1).le(w.shape[1] // 2).all()
    manifest = read_manifest(out)
    assert manifest.method_report["calibration_tokens"] > 0 and set(manifest.patterns.values()) == {pattern}
    assert 0.45 < summary["sparsity"]["saved"]["sparsity"] <= 0.5
