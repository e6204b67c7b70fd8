"""int8 on top of pruning: both backends quantize what they say, stay close to fp32, and the CLI measures and
exports them without leaving anything half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.runs import int8
from prunekit.runs.export import export_onnx
from prunekit.runs.io import read_manifest
from tiny import tiny_inputs, tiny_model
from train_fixtures import sentiment_csv, tiny_bert_dir


def _close(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def test_torch_int8_quantizes_every_linear_of_a_copy():
    model = tiny_model("bert").eval()
    q, report = int8.torch_int8(model)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert report["quantized"] == len(linears) > 0 and report["fp32"] == []
    assert not any(type(m) is nn.Linear for m in q.modules())  # every one swapped
    assert all(type(m) is nn.Linear for m in linears)  # the original is untouched
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        ref, got = model(**inputs).logits, q(**inputs).logits
    assert 0 < _close(got, ref) < 0.3  # rounded (a random tiny model rounds badly), not broken


def test_gpt2_conv1d_stays_fp32_and_is_reported():
    _, report = int8.torch_int8(tiny_model("gpt2"))
    assert report["fp32"] and all("attn" in n or "mlp" in n for n in report["fp32"])


def test_int8_onnx_is_quantized_smaller_and_close(tmp_path):
    model = tiny_model("bert").eval()
    export_onnx(model, tmp_path / "fp32.onnx")
    info = int8.export_int8(model, tmp_path / "m.int8.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "m.int8.onnx"]  # no temporary left
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.int8.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    assert info["size_bytes"] < (tmp_path / "fp32.onnx").stat().st_size
    session = int8.OnnxModel(tmp_path / "m.int8.onnx", model.config)
    inputs = tiny_inputs("bert", batch=3, seq=9, seed=2)
    with torch.no_grad():
        assert 0 < _close(session(**inputs).logits, model(**inputs).logits) < 0.3
    assert info["int8_max_abs_diff"] > 0


def test_a_graph_without_segments_refuses_a_second_segment(tmp_path):
    model = tiny_model("distilbert").eval()  # no token types: the graph takes ids and mask only
    export_onnx(model, tmp_path / "d.onnx")
    session = int8.OnnxModel(tmp_path / "d.onnx", model.config)
    inputs = tiny_inputs("distilbert")
    with torch.no_grad():
        ref = model(**inputs).logits
        same = session(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"])).logits
    assert (same - ref).abs().max() < 1e-4
    with pytest.raises(UsageError, match="takes no token_type_ids"):
        session(**inputs, token_type_ids=torch.ones_like(inputs["input_ids"]))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    recipe = root / "r.yaml"
    recipe.write_text(
        f"model: {tiny_bert_dir(root)}\n"
        f"data: {{dataset: {sentiment_csv(root)}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "finetune: {epochs: 4, batch_size: 16, lr: 1.0e-2, max_length: 16}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16}\n"
        "method: {name: structured, heads: 0.5, neurons: 0.5, calibration_examples: 32}\n"
        "bench: {enabled: false}\n"
    )
    out = root / "run"
    proc = _cli("prune", str(recipe), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_bench_int8_times_and_scores_every_form(pruned_run):
    proc = _cli("bench", str(pruned_run), "--int8", "--json", "--batch", "2", "--seq", "16", "--repeats", "2",
                "--warmup", "1", "--no-memory")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)["int8"]
    names = ["dense fp32", "pruned fp32", "pruned int8 (torch)", "pruned int8 (onnxruntime)"]
    assert list(result["latency"][0]["median_ms"]) == names and result["latency"][0]["speedup"]["dense fp32"] == 1
    recorded = read_manifest(pruned_run).metrics
    assert result["metrics"]["pruned fp32"]["accuracy"] == pytest.approx(recorded["test"]["accuracy"])
    assert result["metrics"]["dense fp32"]["accuracy"] == pytest.approx(recorded["dense"]["test"]["accuracy"])
    for name in names[2:]:
        assert abs(result["metrics"][name]["accuracy"] - recorded["test"]["accuracy"]) <= 0.15
    assert result["backends"]["onnxruntime"]["quantized"]["reduce_range"] == (not int8.cpu_has_vnni())


def test_export_quantize_int8_writes_once(pruned_run):
    target = pruned_run / "model.int8.onnx"
    proc = _cli("export", str(pruned_run), "--quantize", "int8")
    assert proc.returncode == 0 and target.is_file(), proc.stderr[-2000:]
    before = target.read_bytes()
    again = _cli("export", str(pruned_run), "--quantize", "int8")
    assert again.returncode == 2 and "exists" in again.stderr and target.read_bytes() == before
    bad = _cli("export", str(pruned_run), "--quantize", "int4")
    assert bad.returncode == 2 and "--quantize 'int4'" in bad.stderr
    target.unlink()


def test_bench_int8_of_a_run_without_a_task_times_but_does_not_score(tmp_path):
    out = tmp_path / "plain"
    proc = _cli("compact", str(tiny_bert_dir(tmp_path)), str(out), "-p", "heads=0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli("bench", str(out), "--int8", "--batch", "2", "--seq", "16", "--repeats", "1", "--warmup", "0",
                "--no-memory")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pruned int8 (onnxruntime)" in proc.stdout and "not scored" in proc.stdout
