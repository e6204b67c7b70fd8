"""One-shot weight pruning. Wanda: the score is |W| times the input feature's norm over real tokens, each row (or
N:M group) keeps its top share, a large input rescues small weights that magnitude would drop. SparseGPT: one
removed weight's update is the OBS closed form, and the updates reconstruct the layer better than the mask alone.
A one-shot run keeps the zeros."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.importance.sparsegpt import _inverse_cholesky, input_hessians, sparsegpt_prune
from prunekit.importance.wanda import input_norms, row_masks, wanda_masks, wanda_scores
from prunekit.methods.base import create_method
from prunekit.runs.io import load, read_manifest
from prunekit.topology import describe, get_module, weight_view
from tiny import tiny_inputs, tiny_model
from train_fixtures import lm_jsonl, sentiment_csv, tiny_bert_dir, tiny_llama_dir


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
    method = create_method("oneshot", {"sparsity": 0.5, "calibration_examples": 4})  # score wanda by default
    method.calibrate(model, [tiny_inputs("llama"), tiny_inputs("llama", seed=1)])
    masks = method.prune_before_training()
    names = describe(model).prunable_linears()
    assert sorted(masks.weights) == sorted(names) and set(masks.patterns.values()) == {"unstructured"}
    for n in names:
        w = weight_view(get_module(model, n))
        assert masks.weights[n].shape == w.shape and masks.weights[n].sum(1).eq(w.shape[1] // 2).all()


def test_magnitude_score_reads_no_data_and_keeps_the_largest_weights():
    model = tiny_model("bert").eval()
    method = create_method("oneshot", {"score": "magnitude", "sparsity": 0.5})
    method.calibrate(model, iter(()))  # no batches needed
    masks = method.prune_before_training()
    for n, keep in masks.weights.items():
        torch.testing.assert_close(keep, row_masks(weight_view(get_module(model, n)).abs(), 0.5))


def test_refuses_structured_patterns():
    with pytest.raises(UsageError, match="unstructured or N:M"):
        create_method("oneshot", {"pattern": "head"})


@pytest.mark.parametrize(("score", "pattern"), [("wanda", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "2:4")])
def test_one_shot_run_keeps_the_zeros(tmp_path, score, pattern):
    recipe = tmp_path / "w.yaml"
    recipe.write_text(
        f"model: {tiny_bert_dir(tmp_path)}\n"
        f"data: {{dataset: {sentiment_csv(tmp_path)}, task: classification, "
        "columns: {text: review, label: verdict}}\n"
        "finetune: {epochs: 2, batch_size: 16, lr: 1.0e-2, max_length: 16}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16}\n"
        f"method: {{name: oneshot, score: {score}, sparsity: 0.5, pattern: '{pattern}', calibration_examples: 32}}\n"
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


def _correlated_inputs(n: int = 400, d: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def test_one_removed_weight_gets_the_obs_update():
    x = _correlated_inputs()
    h = x.T @ x
    w = torch.randn(5, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w[2, 0] = 1e-4  # the least salient weight by far
    pruned, keep = sparsegpt_prune(w, h, sparsity=1.5 / w.numel(), block=32, damp=0.01)  # one block, one weight
    assert (~keep).sum() == 1 and not keep[2, 0]
    u = _inverse_cholesky(h, 0.01)
    hinv = u.T @ u  # the dampened inverse
    expected = w[2] - (w[2, 0] / hinv[0, 0]) * hinv[0]
    torch.testing.assert_close(pruned[2], expected, rtol=1e-8, atol=1e-10)
    assert pruned[2, 0] == 0
    torch.testing.assert_close(pruned[[0, 1, 3, 4]], w[[0, 1, 3, 4]])  # rows are independent


@pytest.mark.parametrize(("sparsity", "nm"), [(0.5, None), (None, (2, 4))])
def test_updates_reconstruct_the_layer_better_than_the_mask_alone(sparsity, nm):
    x = _correlated_inputs()
    h = x.T @ x
    w = torch.randn(16, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pruned, keep = sparsegpt_prune(w, h, sparsity=sparsity, nm=nm, block=8)
    assert torch.equal(pruned != 0, keep)
    if nm:
        assert keep.reshape(16, 6, 4).sum(-1).eq(2).all()
    else:
        assert keep.sum() == w.numel() // 2

    def error(v: torch.Tensor) -> float:
        return float(((w - v) @ x.T).pow(2).sum())

    wanda_keep = wanda_masks({"w": w.abs() * x.norm(dim=0)[None, :]}, sparsity, nm)["w"]
    assert error(pruned) < error(w * keep) and error(pruned) < error(w * wanda_keep)


def test_lazy_block_updates_equal_the_column_by_column_algorithm():
    """Blocks only defer the updates of later columns: with N:M (chosen group by group either way) any block size
    gives the same weights as one block."""
    x = _correlated_inputs()
    w = torch.randn(16, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    whole, keep = sparsegpt_prune(w, x.T @ x, nm=(2, 4), block=24)
    for block in (4, 8, 12):
        blocked, keep_b = sparsegpt_prune(w, x.T @ x, nm=(2, 4), block=block)
        assert torch.equal(keep_b, keep)
        torch.testing.assert_close(blocked, whole, rtol=1e-9, atol=1e-10)


def test_hessians_are_the_real_tokens_gram_matrices():
    model = tiny_model("llama").eval()
    names = describe(model).prunable_linears()[:2]
    batch = tiny_inputs("llama")
    norms, _ = input_norms(model, names, [batch])
    hessians, tokens = input_hessians(model, names, [batch])
    assert tokens == int(batch["attention_mask"].sum())
    for n in names:  # the diagonal of X^T X is the squared feature norm
        torch.testing.assert_close(torch.diagonal(hessians[n]).float(), norms[n].pow(2), rtol=1e-4, atol=1e-6)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=600)


def test_oneshot_command_writes_a_run_the_other_commands_read(tmp_path):
    """`prunekit oneshot` on a decoder: 2:4 by SparseGPT, no training, an ordinary run directory."""
    out = tmp_path / "run"
    proc = _cli("oneshot", str(tiny_llama_dir(tmp_path)), str(lm_jsonl(tmp_path)), str(out), "--method", "sparsegpt",
                "--pattern", "2:4", "--calibration", "8", "--seq", "32", "--no-progress", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    manifest = read_manifest(out)
    assert manifest.method == "oneshot" and set(manifest.patterns.values()) == {"2:4"}
    report = manifest.method_report
    assert report["score"] == "sparsegpt" and report["calibration_tokens"] == 8 * 32 and report["sequential"]
    assert summary["bench"]["latency"] and summary["metrics"]["test"]["perplexity"] > 1
    assert "- calibration tokens: 256" in (out / "report.md").read_text()  # the method's report reaches report.md
    model = load(out, block_sparse="never")
    for n in describe(model).prunable_linears():
        w = weight_view(get_module(model, n))
        assert w.ne(0).reshape(w.shape[0], -1, 4).sum(-1).le(2).all()
    proc = _cli("evaluate", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)[0]["perplexity"] == pytest.approx(summary["metrics"]["test"]["perplexity"], rel=1e-4)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--sparsity", "0.5", "--pattern", "2:4"), "not both"),
        (("--method", "obs"), "not wanda, sparsegpt or magnitude"),
    ],
)
def test_oneshot_command_refuses_bad_flags_in_one_line(tmp_path, flags, says):
    out = tmp_path / "run"
    proc = _cli("oneshot", str(tiny_llama_dir(tmp_path)), str(lm_jsonl(tmp_path)), str(out), *flags)
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not any(p.name.startswith(".run") for p in tmp_path.iterdir())


@pytest.mark.parametrize("start", ["wanda", "sparsegpt"])
def test_asp_and_admm_start_from_the_one_shot_mask(start):
    """`start_from`: the N:M methods begin where one-shot pruning left the weights; ASP freezes exactly that mask
    (and SparseGPT's updated weights), ADMM's Z starts at it."""
    batches = [tiny_inputs("bert", batch=4, seq=12, seed=s) for s in range(3)]
    reference = tiny_model("bert")
    oneshot = create_method("oneshot", {"score": start, "pattern": "2:4"})
    oneshot.calibrate(reference, batches)
    expected = oneshot.prune_before_training().weights
    for name in ("asp", "admm"):
        model = tiny_model("bert")
        method = create_method(name, {"start_from": start, "calibration_examples": 12})
        assert method.calibration_examples() == 12
        method.calibrate(model, batches)
        method.attach(model, describe(model))
        assert method.report()["start_from"] == start and method.report()["start"]["calibration_tokens"] > 0
        for n, keep in expected.items():
            view = weight_view(get_module(model, n))
            torch.testing.assert_close(view, weight_view(get_module(reference, n)))
            if name == "asp":
                torch.testing.assert_close(method.masks().weights[n].bool(), keep)
            else:
                torch.testing.assert_close(method.z[n].ne(0), keep)
    assert create_method("asp", {}).calibration_examples() == 0  # magnitude: no calibration
