"""The block-sparse kernel equals the dense matmul; BlockSparseLinear is a drop-in, saved as a plain linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.kernels import (
    BlockSparseLinear,
    block_density,
    block_sparse_linear,
    pack_block_sparse,
    unpack_block_sparse,
)
from prunekit.kernels.block_sparse import block_mask, gather_linear, infer_block, pack_blocks, pack_runs, runs_linear
from prunekit.topology import describe, get_module
from prunekit.topology.modules import ScatterLinear
from tiny import tiny_inputs, tiny_model


def _block_sparse_weight(out_f: int, in_f: int, block: int, density: float, seed: int = 0) -> torch.Tensor:
    """A random weight with exactly round(density * blocks) kept B x B blocks at random places."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = out_f // block, in_f // block
    keep = torch.zeros(rows * cols, dtype=torch.bool)
    keep[torch.randperm(rows * cols, generator=g)[: round(density * rows * cols)]] = True
    mask = keep.view(rows, cols).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return torch.randn(out_f, in_f, generator=g) * mask


SHAPES = [(64, 32, 16), (96, 64, 32), (48, 80, 16), (128, 384, 32), (384, 128, 16)]


@pytest.mark.parametrize("out_f,in_f,block", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.2, 0.4, 0.75, 1.0])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("kernel", ["gather", "runs"])
def test_cpu_kernels_equal_dense(out_f, in_f, block, density, with_bias, kernel):
    w = _block_sparse_weight(out_f, in_f, block, density, seed=out_f + in_f)
    bias = torch.randn(out_f) if with_bias else None
    x = torch.randn(3, 37, in_f)
    assert block_density(w, block) == pytest.approx(round(density * (out_f // block) * (in_f // block))
                                                    / ((out_f // block) * (in_f // block)))  # fmt: skip
    got = block_sparse_linear(x, w, bias, block, kernel=kernel)
    torch.testing.assert_close(got, F.linear(x, w, bias), atol=1e-4, rtol=1e-5)
    packed = pack_blocks(w, bias, block)
    assert packed.kept_blocks == int(block_mask(w, block).sum())
    assert sum(idx.numel() for _, idx, _, _ in packed.rows) == packed.kept_blocks * block


def test_kernel_handles_one_token_and_refuses_a_block_that_does_not_divide():
    w = _block_sparse_weight(32, 64, 16, 0.5)
    x = torch.randn(1, 64)
    torch.testing.assert_close(gather_linear(x, pack_blocks(w, None, 16)), F.linear(x, w), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(runs_linear(x, pack_runs(w, None, 16)), F.linear(x, w), atol=1e-4, rtol=1e-5)
    # runs merge adjacent kept blocks: a fully kept block-row is one GEMM
    full = torch.randn(32, 64)
    assert [len(runs) for _, runs in pack_runs(full, None, 16).rows] == [1, 1]
    with pytest.raises(Exception, match="does not divide"):
        block_mask(w, 24)


def test_infer_block_finds_the_pruning_pattern():
    assert infer_block(_block_sparse_weight(64, 128, 16, 0.3)) == 16
    assert infer_block(_block_sparse_weight(64, 128, 32, 0.3)) == 32
    assert infer_block(torch.randn(64, 128)) is None
    assert infer_block(torch.randn(64, 128) * (torch.rand(64, 128) > 0.5)) is None  # unstructured zeros


def _linear(out_f: int, in_f: int, block: int, density: float, scatter: bool = False) -> nn.Linear:
    if scatter:
        lin = ScatterLinear(in_f, out_f, out_f + 16)
        lin.out_index = torch.randperm(out_f + 16)[:out_f].sort().values
    else:
        lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(_block_sparse_weight(out_f, in_f, block, density))
    return lin


@pytest.mark.parametrize("scatter", [False, True])
@pytest.mark.parametrize("backend", ["gather", "runs"])
def test_block_sparse_linear_is_a_drop_in(scatter, backend):
    lin = _linear(64, 96, 16, 0.3, scatter)
    packed = BlockSparseLinear(lin, 16, backend)
    assert packed.weight is lin.weight and packed.bias is lin.bias
    assert list(packed.state_dict()) == list(lin.state_dict())
    x = torch.randn(2, 5, 96)
    with torch.no_grad():
        ref = lin(x)
        got = packed(x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    # training runs the dense path, with gradients reaching the shared weight
    packed(x).sum().backward()
    assert lin.weight.grad is not None
    # a changed weight is repacked (version counter), not served stale
    with torch.no_grad():
        lin.weight.mul_(2.0)
        torch.testing.assert_close(packed(x), lin(x), atol=1e-4, rtol=1e-5)
    back = packed.to_linear()
    assert type(back) is type(lin) and back.weight is lin.weight
    with torch.no_grad():
        torch.testing.assert_close(back(x), lin(x))


def _block_prune_model(family: str, block: int = 8, density: float = 0.3) -> nn.Module:
    model = tiny_model(family)
    with torch.no_grad():
        for i, name in enumerate(describe(model).prunable_linears()):
            w = get_module(model, name).weight
            w.mul_(_block_sparse_weight(*w.shape, block, density, seed=i) != 0)
    return model


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_pack_always_then_save_load_and_same_outputs(family, tmp_path):
    from prunekit.runs.io import load, save

    model = _block_prune_model(family)
    inputs = tiny_inputs(family)
    with torch.no_grad():
        ref = model(**inputs).logits
    keys = list(model.state_dict())
    report = pack_block_sparse(model, always=True)
    assert report["packed"] == len(describe(model).prunable_linears())
    assert all(e["block"] == 8 and 0 < e["density"] < 1 for e in report["matrices"])
    assert list(model.state_dict()) == keys  # saving sees the standard weights
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ref, atol=1e-4, rtol=1e-4)
    save(model, tmp_path / "run")
    loaded = load(tmp_path / "run")
    assert not any(isinstance(m, BlockSparseLinear) for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, ref, atol=1e-4, rtol=1e-4)
    assert unpack_block_sparse(model) == report["packed"]
    assert not any(isinstance(m, BlockSparseLinear) for m in model.modules())


def test_flops_of_a_packed_matrix_count_only_its_kept_blocks():
    from prunekit.bench import flops_per_token

    model = _block_prune_model("bert")
    dense = flops_per_token(model, 16)["blocks"]
    pack_block_sparse(model, always=True)
    kept = sum(
        2 * m.out_features * m.in_features * block_density(m.weight, m.block)
        for m in model.modules()
        if isinstance(m, BlockSparseLinear)
    )
    assert 0 < kept < dense
    assert flops_per_token(model, 16)["blocks"] == pytest.approx(kept)
    unpack_block_sparse(model)
    assert flops_per_token(model, 16)["blocks"] == pytest.approx(dense)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_load_puts_block_pruned_matrices_back_into_the_kernel(family, tmp_path):
    from prunekit.core.errors import UsageError
    from prunekit.runs.io import load, save

    model = _block_prune_model(family)
    names = describe(model).prunable_linears()
    inputs = tiny_inputs(family)
    with torch.no_grad():
        ref = model(**inputs).logits
    save(model, tmp_path / "run", patterns={name: "8x8" for name in names[:3]} | {names[3]: "unstructured"})
    packed = load(tmp_path / "run", block_sparse="always")
    kernels = {n for n, m in packed.named_modules() if isinstance(m, BlockSparseLinear)}
    assert kernels == set(names[:3])  # what the manifest says was block-pruned, nothing else
    plain = load(tmp_path / "run", block_sparse="never")
    assert not any(isinstance(m, BlockSparseLinear) for m in plain.modules())
    auto = load(tmp_path / "run")  # timed on this machine: any subset of the three
    assert {n for n, m in auto.named_modules() if isinstance(m, BlockSparseLinear)} <= set(names[:3])
    with torch.no_grad():
        for m in (packed, plain, auto):
            torch.testing.assert_close(m(**inputs).logits, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(UsageError, match="block_sparse"):
        load(tmp_path / "run", block_sparse="sometimes")


def test_pack_auto_decides_by_timing_and_skips_dense_matrices():
    model = _block_prune_model("bert")
    with torch.no_grad():  # one matrix without any zero block
        get_module(model, describe(model).blocks[0].attention.q).weight.normal_()
    report = pack_block_sparse(model, tokens=64, repeats=1, warmup=0, min_speedup=1e-9)
    by_name = {e["name"]: e for e in report["matrices"]}
    q = describe(model).blocks[0].attention.q
    assert by_name[q]["packed"] is False and by_name[q]["skipped"]
    timed = [e for e in report["matrices"] if e["packed"]]
    assert timed and all(e["dense_ms"] > 0 and e["sparse_ms"] > 0 and e["speedup"] > 0 for e in timed)
    assert {e["backend"] for e in timed} <= {"gather", "runs"}
    never = pack_block_sparse(_block_prune_model("bert"), tokens=64, repeats=1, warmup=0, min_speedup=1e9)
    assert never["packed"] == 0


def test_onnx_export_of_a_packed_model_uses_the_dense_weights(tmp_path):
    pytest.importorskip("onnxruntime")
    from prunekit.runs.export import export_onnx

    model = _block_prune_model("bert")
    pack_block_sparse(model, always=True)
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] <= 1e-4
