"""ONNX export: onnxruntime must compute what PyTorch computes, dense and compacted, at any shape."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from prunekit.compact.remove import check_equal, compact
from prunekit.core.errors import PrunekitError, UsageError
from prunekit.masks import LayerMask, MaskSet
from prunekit.runs import export
from prunekit.runs.export import export_onnx
from tiny import FAMILIES, tiny_inputs, tiny_model

# dynamo export takes ~5 s per tiny model: the compacted cases beyond one encoder and one decoder are slow
FAST_COMPACTED = ("bert", "llama")


def _masks(degenerate: bool = False) -> MaskSet:
    """Every kind of pruned structure: heads (per-KV-group uniform for Llama), neurons, scattered
    attention/FFN rows, a layer with no head left (EmptyAttention) and dropped sublayers."""
    g = torch.Generator().manual_seed(0)
    if degenerate:  # zero-width FFN, sublayers that write no dimension
        none = torch.zeros(32, dtype=torch.bool)
        return MaskSet(
            layers={
                0: LayerMask(neurons=torch.zeros(48, dtype=torch.bool), attn_rows=none),
                1: LayerMask(ffn_rows=none, heads=torch.zeros(4, dtype=torch.bool)),
                2: LayerMask(drop_attention=True),
            }
        )
    return MaskSet(
        layers={
            0: LayerMask(
                heads=torch.tensor([1, 0, 1, 0]).bool(),
                neurons=torch.rand(48, generator=g) > 0.4,
                attn_rows=torch.rand(32, generator=g) > 0.3,
                ffn_rows=torch.rand(32, generator=g) > 0.3,
            ),
            1: LayerMask(heads=torch.zeros(4, dtype=torch.bool), neurons=torch.rand(48, generator=g) > 0.5),
            2: LayerMask(drop_attention=True, drop_ffn=True),
        }
    )


def _compacted(family: str, degenerate: bool = False):
    model, masks = tiny_model(family), _masks(degenerate)
    check_equal(model, masks, tiny_inputs(family))  # compaction itself is exact
    return compact(model, masks).eval()


def _ort_matches(model, path, family: str) -> float:
    """Independent of export_onnx's own check: another shape again, every output compared."""
    inputs = tiny_inputs(family, batch=3, seq=5, seed=3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:  # BERT-like: one segment, as the model's default
        inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        ref = model(**inputs).logits.numpy()
    assert got[0].shape == ref.shape
    return float(np.abs(got[0] - ref).max())


def _export_and_compare(model, family: str, tmp_path, **kwargs) -> dict:
    path = tmp_path / f"{family}.onnx"
    info = export_onnx(model, path, example_inputs=tiny_inputs(family), **kwargs)
    assert info["path"] == str(path) and path.is_file()
    assert info["max_abs_diff"] <= 1e-4
    assert info["size_bytes"] >= path.stat().st_size > 0
    assert info["opset"] and info["outputs"] == ["logits"]
    assert _ort_matches(model, path, family) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind
    return info


def test_sentence_pairs_keep_their_segments(tmp_path):
    """A model that embeds segments takes token_type_ids in the graph: a pair's second sentence reads as such."""
    model = tiny_model("bert").eval()
    path = tmp_path / "bert.onnx"
    export_onnx(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    inputs = tiny_inputs("bert", batch=3, seq=6, seed=4)
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    inputs["token_type_ids"][:, 3:] = 1
    with torch.no_grad():
        ref = model(**inputs).logits.numpy()
        one_segment = model(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits.numpy()
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert np.abs(got - ref).max() <= 1e-4
    assert np.abs(ref - one_segment).max() > 1e-3  # the segments change the output: the check can fail
    assert export.input_names(tiny_model("llama")) == ("input_ids", "attention_mask")


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_export_matches(family, tmp_path):
    info = _export_and_compare(tiny_model(family), family, tmp_path)
    assert info["exporter"] == "dynamo"


@pytest.mark.parametrize(
    "family", [f if f in FAST_COMPACTED else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)
def test_compacted_export_matches(family, tmp_path):
    info = _export_and_compare(_compacted(family), family, tmp_path)
    assert info["exporter"] == "dynamo"


@pytest.mark.parametrize("family", FAMILIES)
def test_degenerate_compaction_exports(family, tmp_path):
    """Zero-width layers (PrunedConv1D reshaping through a 0 once broke ONNX Reshape); TorchScript is fast."""
    _export_and_compare(_compacted(family, degenerate=True), family, tmp_path, exporter="torchscript")


def test_degenerate_gpt2_dynamo(tmp_path):
    _export_and_compare(_compacted("gpt2", degenerate=True), "gpt2", tmp_path, exporter="dynamo")


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(torch.onnx, "export", boom)
    path = tmp_path / "model.onnx"
    with pytest.raises(PrunekitError, match="dynamo: RuntimeError: simulated.*torchscript: RuntimeError"):
        export_onnx(tiny_model("bert"), path)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    real = torch.onnx.export

    def half_written(model, args, f, **kwargs):
        real(model, args, f, **kwargs)
        raise RuntimeError("died after writing")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(PrunekitError, match="died after writing"):
        export_onnx(tiny_model("bert"), path, exporter="torchscript")
    assert path.read_bytes() == b"previous export" and len(list(tmp_path.iterdir())) == 1


def test_mismatch_raises_and_writes_nothing(tmp_path):
    path = tmp_path / "model.onnx"
    with pytest.raises(PrunekitError, match="differs from PyTorch by"):
        export_onnx(tiny_model("bert"), path, exporter="torchscript", atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_falls_back_to_torchscript_and_restores_training(tmp_path, monkeypatch):
    def no_dynamo(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this")

    monkeypatch.setitem(export._EXPORTERS, "dynamo", no_dynamo)
    model = tiny_model("distilbert").train()
    model.distilbert.embeddings.eval()  # a partly frozen model keeps its per-module flags
    info = export_onnx(model, tmp_path / "m.onnx")
    assert info["exporter"] == "torchscript" and info["max_abs_diff"] <= 1e-4
    assert model.training and not model.distilbert.embeddings.training and model.classifier.training


def test_external_data_travels_with_the_model(tmp_path, monkeypatch):
    """Models over 2 GB store weights beside the graph: both files must land, and load from there."""
    real = export._EXPORTERS["torchscript"]

    def with_external(wrapper, inputs, path, opset, names):
        real(wrapper, inputs, path, opset, names)
        proto = onnx.load(str(path))
        onnx.save(proto, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)

    monkeypatch.setitem(export._EXPORTERS, "torchscript", with_external)
    path = tmp_path / "ext.onnx"
    info = export_onnx(tiny_model("llama"), path, exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    assert info["size_bytes"] == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert _ort_matches(tiny_model("llama"), path, "llama") <= 1e-4


def test_outputs_for_base_model_and_fp16_refused(tmp_path):
    base = tiny_model("bert", head="base")
    info = export_onnx(base, tmp_path / "base.onnx", exporter="torchscript")
    assert info["outputs"] == ["last_hidden_state"]
    with pytest.raises(UsageError, match="fp32"):
        export_onnx(tiny_model("bert").half(), tmp_path / "half.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.onnx"]
