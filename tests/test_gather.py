"""Input-dimension gathers: hidden dimensions q/k/v or the FFN inputs no longer read are removed exactly, for every
family, whether masks name them (attn_cols / ffn_cols) or the weights already hold their zero columns; the gathered
model saves, loads, exports and counts FLOPs at its gathered width."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.bench import flops_per_token
from prunekit.compact.remove import check_equal, compact, gather_cols
from prunekit.compact.structure import plain_loadable, structure
from prunekit.core.errors import UsageError
from prunekit.kernels import pack_block_sparse
from prunekit.masks import (
    LayerMask,
    MaskSet,
    apply_masks,
    attention_inputs,
    maskset_from_state,
    maskset_state,
    merge,
    sparsity_report,
)
from prunekit.runs.io import read_manifest
from prunekit.topology import describe, get_module, linear_shape, weight_view
from prunekit.topology.base import set_module
from prunekit.topology.modules import GatherConv1D, GatherLinear, ScatterLinear
from test_compact import random_masks
from test_export import _export_and_compare
from tiny import FAMILIES, tiny_inputs, tiny_model

HIDDEN = 32
GATHERS = (GatherLinear, GatherConv1D)


def _col_masks(seed: int, layers: int = 3) -> MaskSet:
    g = torch.Generator().manual_seed(seed)
    return MaskSet(
        layers={
            i: LayerMask(
                attn_cols=torch.rand(HIDDEN, generator=g) < 0.6, ffn_cols=torch.rand(HIDDEN, generator=g) < 0.6
            )
            for i in range(layers)
        }
    )


def _groups(model: nn.Module) -> list[tuple[int, str, list[str]]]:
    """(layer, 'attn' | 'ffn', the linears reading that sublayer's input) for every block."""
    return [
        g
        for b in describe(model).blocks
        for g in ((b.index, "attn", attention_inputs(b.attention)), (b.index, "ffn", b.ffn.inputs if b.ffn else []))
    ]


def _removed_weights(model: nn.Module, cols: dict[tuple[int, str], torch.Tensor]) -> int:
    """Weights the removed columns hold: out_features x removed dimensions, per input linear of each group."""
    total = 0
    for i, kind, names in _groups(model):
        if (i, kind) in cols:
            gone = int((~cols[i, kind]).sum())
            total += sum(linear_shape(get_module(model, n))[0] * gone for n in names)
    return total


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _logits(model: nn.Module, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_columns_compact_exactly(family):
    """compacted == masked, the masks change the function, and exactly the removed columns' weights go (params,
    sparsity accounting, FLOPs, structure)."""
    model, masks, x = tiny_model(family), _col_masks(1), tiny_inputs(family)
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    assert (_logits(masked, x) - _logits(model, x)).abs().max() > 1e-3  # the check below can fail
    compacted = compact(copy.deepcopy(model), masks)
    torch.testing.assert_close(_logits(compacted, x), _logits(masked, x), atol=1e-5, rtol=0)

    cols = {(i, k): getattr(lm, f"{k}_cols") for i, lm in masks.layers.items() for k in ("attn", "ffn")}
    removed = _removed_weights(model, cols)
    assert removed > 0 and _n_params(model) - _n_params(compacted) == removed
    assert sparsity_report(model, masks)["kept"] == sparsity_report(compacted)["kept"]
    assert flops_per_token(model, 7)["blocks"] - flops_per_token(compacted, 7)["blocks"] == 2 * removed
    for i, entry in enumerate(structure(compacted)):
        assert (entry["attn_cols"], entry["ffn_cols"]) == (int(cols[i, "attn"].sum()), int(cols[i, "ffn"].sum()))
    for i, kind, names in _groups(compacted):
        for name in names:
            module = get_module(compacted, name)
            assert isinstance(module, GATHERS)
            assert torch.equal(module.in_index, torch.nonzero(cols[i, kind]).flatten())
    assert not plain_loadable(compacted)


@pytest.mark.parametrize("family", FAMILIES)
def test_columns_compose_with_heads_neurons_rows_and_a_second_compaction(family):
    model = tiny_model(family)
    masks = merge(random_masks(family, 2), _col_masks(2))
    check_equal(model, masks, tiny_inputs(family), atol=1e-5)
    once = compact(copy.deepcopy(model), masks)
    check_equal(once, _col_masks(3), tiny_inputs(family), atol=1e-5)  # a gather of a gather


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_columns_are_found_without_masks(family):
    """Columns zero in every linear of a group are gathered away by compact() alone; a column zero in only one of
    them (q, or gate; half of GPT-2's fused c_attn or of a lone W1) is still read and stays."""
    model, x = tiny_model(family), tiny_inputs(family)
    cols: dict[tuple[int, str], torch.Tensor] = {}
    partial = 5
    with torch.no_grad():
        for i, kind, names in _groups(model):
            dead = torch.randperm(HIDDEN, generator=torch.Generator().manual_seed(10 * i + len(kind)))[:9]
            dead = dead[dead != partial]
            for name in names:
                weight_view(get_module(model, name))[:, dead] = 0.0
            first = weight_view(get_module(model, names[0]))
            first[: first.shape[0] if len(names) > 1 else first.shape[0] // 2, partial] = 0.0
            keep = torch.ones(HIDDEN, dtype=torch.bool)
            keep[dead] = False
            cols[i, kind] = keep
    ref = _logits(model, x)
    compacted = compact(copy.deepcopy(model), MaskSet())
    torch.testing.assert_close(_logits(compacted, x), ref, atol=1e-5, rtol=0)
    assert _n_params(model) - _n_params(compacted) == _removed_weights(model, cols)
    for i, kind, names in _groups(compacted):
        for name in names:
            module = get_module(compacted, name)
            assert isinstance(module, GATHERS)
            assert torch.equal(module.in_index, torch.nonzero(cols[i, kind]).flatten())
    again = compact(copy.deepcopy(compacted), MaskSet())  # nothing more is zero: nothing changes
    assert _n_params(again) == _n_params(compacted)


@pytest.mark.parametrize("family", FAMILIES)
def test_gathered_model_saves_and_loads(family, tmp_path):
    """Same module types, same weights and index buffers, same outputs; a layer gathered before its FFN lost every
    neuron (a zero-width gather) rebuilds too."""
    model = compact(tiny_model(family), merge(random_masks(family, 4), _col_masks(4)))
    model = compact(model, MaskSet(layers={1: LayerMask(neurons=torch.zeros(describe(model).blocks[1].ffn.width) > 0)}))
    prunekit.save(model, tmp_path / "run", method="test")
    loaded = prunekit.load(tmp_path / "run")
    types = {n: type(m) for n, m in model.named_modules()}
    assert {n: type(m) for n, m in loaded.named_modules()} == types
    assert sum(issubclass(t, GATHERS) for t in types.values()) >= 3
    saved, got = model.state_dict(), loaded.state_dict()
    assert saved.keys() == got.keys() and any(k.endswith("in_index") for k in saved)
    for key in saved:
        assert torch.equal(saved[key], got[key]), key
    x = tiny_inputs(family)
    torch.testing.assert_close(_logits(loaded, x), _logits(model, x), atol=1e-5, rtol=0)
    assert [e.ffn_cols for e in read_manifest(tmp_path / "run").structure] == [e["ffn_cols"] for e in structure(model)]


@pytest.mark.parametrize("family", FAMILIES)
def test_gathered_model_exports_to_onnx(family, tmp_path):
    """onnxruntime computes what PyTorch does; dynamo (the default exporter, ~10 s) for Llama, TorchScript (~1 s, the
    fallback) for the others, so the file stays fast."""
    model = compact(tiny_model(family), merge(random_masks(family, 6), _col_masks(6))).eval()
    assert any(isinstance(m, GATHERS) for m in model.modules())
    exporter = "dynamo" if family == "llama" else "torchscript"
    assert _export_and_compare(model, family, tmp_path, exporter=exporter)["exporter"] == exporter


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_zero_width_gathers(family):
    """A sublayer that reads no dimension at all still computes (its biases) and equals the masked model."""
    none, every = torch.zeros(HIDDEN, dtype=torch.bool), torch.ones(HIDDEN, dtype=torch.bool)
    masks = MaskSet(layers={0: LayerMask(attn_cols=none, ffn_cols=every), 1: LayerMask(ffn_cols=none)})
    check_equal(tiny_model(family), masks, tiny_inputs(family), atol=1e-5)
    assert structure(compact(tiny_model(family), masks))[0]["attn_cols"] == 0


def test_layout_patterns_and_other_modules_keep_their_inputs():
    """N:M and block patterns run along the inputs: their zero columns stay (found) or are refused (asked); a
    module that already is something else (a scattering linear) is refused clearly."""
    model = tiny_model("bert")
    att = describe(model).blocks[0].attention
    with torch.no_grad():
        for name in attention_inputs(att):
            weight_view(get_module(model, name))[:, :4] = 0.0
    nm = MaskSet(patterns={att.q: "2:4"})
    kept = compact(copy.deepcopy(model), nm)
    assert type(get_module(kept, att.q)) is nn.Linear and type(get_module(kept, att.k)) is nn.Linear
    unstructured = compact(copy.deepcopy(model), MaskSet(patterns={att.q: "unstructured"}))
    assert isinstance(get_module(unstructured, att.q), GatherLinear)
    asked = MaskSet(layers={0: LayerMask(attn_cols=torch.arange(HIDDEN) >= 4)}, patterns={att.q: "4x4"})
    with pytest.raises(UsageError, match="N:M or block patterns"):
        compact(copy.deepcopy(model), asked)
    set_module(model, att.q, ScatterLinear(HIDDEN, HIDDEN, HIDDEN))
    with pytest.raises(UsageError, match="ScatterLinear"):
        compact(model, MaskSet(layers={0: LayerMask(attn_cols=torch.arange(HIDDEN) >= 4)}))
    with pytest.raises(UsageError, match="plain linear"):
        gather_cols(get_module(model, att.q), torch.ones(HIDDEN, dtype=torch.bool))


def test_block_sparse_kernel_leaves_gathered_linears_unpacked():
    model = compact(tiny_model("bert"), _col_masks(7, layers=1))
    q = describe(model).blocks[0].attention.q
    report = pack_block_sparse(model, names=[q], block=4, always=True)
    assert report["packed"] == 0 and "not a plain linear" in report["matrices"][0]["skipped"]
    assert isinstance(get_module(model, q), GatherLinear)


def test_column_masks_are_layer_masks_like_the_others():
    cols = torch.arange(HIDDEN) % 2 == 0
    assert (
        LayerMask().is_empty() and not LayerMask(attn_cols=cols).is_empty() and not LayerMask(ffn_cols=cols).is_empty()
    )
    assert LayerMask(ffn_cols=torch.ones(HIDDEN, dtype=torch.bool)).is_empty()
    both = merge(MaskSet(layers={0: LayerMask(attn_cols=cols)}), MaskSet(layers={0: LayerMask(attn_cols=~cols)}))
    assert not bool(both.layers[0].attn_cols.any())
    back = maskset_from_state(maskset_state(MaskSet(layers={1: LayerMask(attn_cols=cols, ffn_cols=~cols)})))
    assert torch.equal(back.layers[1].attn_cols, cols) and torch.equal(back.layers[1].ffn_cols, ~cols)
    with pytest.raises(UsageError, match="attn_cols mask has 5 entries"):
        compact(tiny_model("bert"), MaskSet(layers={0: LayerMask(attn_cols=torch.ones(5, dtype=torch.bool))}))
