"""The unstructured sparse kernel is exact (equals the dense product with the zeros), invisible to training and
state dicts, and only installed where asked and measured; without a compiler it falls back, never fails."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.bench import flops_per_token
from prunekit.compact.remove import compact
from prunekit.kernels import unstructured as us
from prunekit.masks import LayerMask, MaskSet, apply_masks
from prunekit.runs.io import load, pack_unstructured
from prunekit.topology import describe, get_module
from prunekit.topology.modules import GatherLinear
from tiny import tiny_inputs, tiny_model
from train_fixtures import sentiment_csv, tiny_bert_dir


def _sparse_weight(out_f: int, in_f: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    w[torch.rand(out_f, in_f, generator=g) < sparsity] = 0
    w[3] = 0  # an output row with no kept weight: bias only
    return w


@pytest.mark.parametrize("tokens", [1, 37, 130])
@pytest.mark.parametrize("tile", us.TILES)
def test_spmm_equals_the_dense_product(tokens, tile):
    assert us.compiled() is not None, us.compile_error()  # CI and the team's machines have a C compiler
    w, b = _sparse_weight(48, 40, 0.9), torch.randn(48)
    x = torch.randn(tokens, 40)
    csr = us.Csr(w, b)
    for threads in (1, 2):
        got = us.spmm_linear(x, csr, tile, threads=threads)
        assert got.shape == (tokens, 48)
        torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(us.spmm_linear(x, us.Csr(w, None), tile), F.linear(x, w), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(us.torch_csr_linear(x, csr), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_sparse_linear_is_exact_at_inference_and_dense_in_training(monkeypatch):
    lin = nn.Linear(40, 48)
    with torch.no_grad():
        lin.weight.copy_(_sparse_weight(48, 40, 0.8))
    sparse = us.SparseLinear(lin, "spmm", 16)
    calls = []
    real = us.spmm_linear
    monkeypatch.setattr(us, "spmm_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 5, 40, requires_grad=True)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x.detach()), lin(x.detach()), atol=1e-5, rtol=1e-5)
    assert calls == [1]
    sparse(x).sum().backward()  # training takes the dense path: gradients reach the shared weight
    assert calls == [1] and lin.weight.grad is not None and x.grad is not None
    assert list(sparse.state_dict()) == list(lin.state_dict()) and sparse.weight is lin.weight
    with torch.no_grad():
        lin.weight[0, 0] = 5.0  # the cached CSR follows the weight
        torch.testing.assert_close(sparse(x), lin(x), atol=1e-5, rtol=1e-5)
    copied = copy.deepcopy(sparse)  # the CSR cache is not copied, but rebuilt
    with torch.inference_mode():
        torch.testing.assert_close(copied(x.detach()), lin(x.detach()), atol=1e-5, rtol=1e-5)


def _zeroed(family: str, sparsity: float = 0.9) -> nn.Module:
    model = tiny_model(family).eval()
    with torch.no_grad():
        for name in describe(model).prunable_linears():
            w = get_module(model, name).weight
            w.mul_(torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) >= sparsity)
    return model


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_packed_model_equals_the_masked_one(family):
    model = _zeroed(family)
    names = describe(model).prunable_linears()
    inputs = tiny_inputs(family)
    with torch.inference_mode():
        ref = model(**inputs).logits
    report = us.pack_sparse(model, tokens=64, min_speedup=0.0, repeats=1, warmup=0)  # every one, for the check
    assert report["packed"] == len(names) and all(isinstance(get_module(model, n), us.SparseLinear) for n in names)
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits, ref, atol=1e-4, rtol=1e-4)
    flops = flops_per_token(model, 16)["blocks"]
    assert us.unpack_sparse(model) == len(names) and flops < 0.2 * flops_per_token(model, 16)["blocks"]


def test_a_gathered_linear_packs_onto_the_full_width_input():
    """A GatherLinear (the read dimensions structure pruning left) in the kernel: its columns become those of the
    full-width input, so outputs, state dict and the round trip back are the gathered layer's."""
    index = torch.tensor([0, 3, 4, 9, 17, 30, 31])
    lin = GatherLinear(len(index), 48, 40)
    with torch.no_grad():
        lin.weight.copy_(_sparse_weight(48, len(index), 0.6))
        lin.in_index.copy_(index)
    x = torch.randn(3, 50, 40)
    for backend, tile in us.candidates():
        sparse = us.SparseLinear(lin, backend, tile)
        with torch.inference_mode():
            torch.testing.assert_close(sparse(x), lin(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sparse(x), lin(x))  # training's dense path gathers too
        assert list(sparse.state_dict()) == list(lin.state_dict()) and sparse.in_index is lin.in_index
        back = sparse.to_linear()
        assert type(back) is GatherLinear and back.weight is lin.weight and torch.equal(back.in_index, index)
        with torch.inference_mode():
            torch.testing.assert_close(back(x), lin(x))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_gathered_model_packs_exactly(family):
    """Structure-pruned and then sparse: compaction gathers q / k / v and the FFN inputs onto the read dimensions
    left, and pack_sparse still puts every matrix in the kernel, equal to the masked model."""
    model = _zeroed(family)
    g = torch.Generator().manual_seed(2)
    layers = {i: LayerMask(attn_cols=torch.rand(32, generator=g) < 0.7, ffn_cols=torch.rand(32, generator=g) < 0.7)
              for i in range(len(describe(model).blocks))}  # fmt: skip
    masks = MaskSet(layers=layers)
    inputs = tiny_inputs(family)
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    model = compact(model, masks)
    names = describe(model).prunable_linears()
    assert any(isinstance(get_module(model, n), GatherLinear) for n in names)
    with torch.inference_mode():
        ref = masked(**inputs).logits
    report = us.pack_sparse(model, tokens=64, min_speedup=0.0, repeats=1, warmup=0)
    assert report["packed"] == len(names)
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits, ref, atol=1e-4, rtol=1e-4)
    us.unpack_sparse(model)
    assert any(type(get_module(model, n)) is GatherLinear for n in names)
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits, ref, atol=1e-4, rtol=1e-4)


def test_only_sparse_enough_and_named_matrices_are_candidates():
    model = _zeroed("bert")
    dense_name = describe(model).prunable_linears()[0]
    with torch.no_grad():
        get_module(model, dense_name).weight.normal_()
    report = us.pack_sparse(model, tokens=64, min_speedup=0.0, repeats=1, warmup=0)
    first = report["matrices"][0]
    assert first["name"] == dense_name and not first["packed"] and "density" in first["skipped"]
    us.unpack_sparse(model)
    chosen = describe(model).prunable_linears()[1:3]
    report = pack_unstructured(model, {chosen[0]: "unstructured", chosen[1]: "2:4", "x": "32x32"})
    assert [e["name"] for e in report["matrices"]] == [chosen[0]]
    assert pack_unstructured(model, None) == {"packed": 0, "matrices": []}


def test_without_a_compiler_torch_csr_remains(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    us.compiled.cache_clear()
    try:
        assert us.compiled() is None and "failed" in us.compile_error()
        assert us.candidates() == [("torch-csr", us.TILES[0])]
        model = _zeroed("bert")
        inputs = tiny_inputs("bert")
        with torch.inference_mode():
            ref = model(**inputs).logits
        report = us.pack_sparse(model, tokens=64, min_speedup=0.0, repeats=1, warmup=0)
        assert report["kernel"] == us.compile_error() and {e["backend"] for e in report["matrices"]} == {"torch-csr"}
        with torch.inference_mode():
            torch.testing.assert_close(model(**inputs).logits, ref, atol=1e-4, rtol=1e-4)
        monkeypatch.delenv("CC")
        us.compiled.cache_clear()
        assert us.compiled() is not None and list(tmp_path.glob("kernels/spmm-*.so"))  # built afresh here
        assert not [p for p in (tmp_path / "kernels").iterdir() if p.is_dir()]  # no build folder left
    finally:
        us.compiled.cache_clear()


def test_an_unstructured_run_benches_and_loads_through_the_kernel(tmp_path):
    """End to end: an L1 run's own bench times its matrices for the kernel and says so; loading it packs where
    faster and computes what the plain load computes."""
    recipe = tmp_path / "l1.yaml"
    recipe.write_text(
        f"model: {tiny_bert_dir(tmp_path)}\n"
        f"data: {{dataset: {sentiment_csv(tmp_path)}, task: classification, "
        "columns: {text: review, label: verdict}}\n"
        "finetune: {epochs: 2, batch_size: 16, lr: 1.0e-2, max_length: 16}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16}\n"
        "method: {name: l1, target_sparsity: 0.9}\n"
        "bench: {batch: [2], seq: 16, repeats: 2, warmup: 1}\n"
    )
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "prunekit.cli", "prune", str(recipe), "--out", str(out),
                           "--no-progress", "--json"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert any(n.startswith("unstructured sparse kernel:") for n in summary["bench"]["notes"]), summary["bench"]
    plain, packed = load(out, block_sparse="never"), load(out)
    assert not any(isinstance(m, us.SparseLinear) for m in plain.modules())
    inputs = tiny_inputs("bert")
    with torch.inference_mode():
        torch.testing.assert_close(packed(**inputs).logits, plain(**inputs).logits, atol=1e-5, rtol=1e-5)
