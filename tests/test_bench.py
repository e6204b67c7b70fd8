"""Benchmark accounting: exact parameter counts, analytic FLOPs of compacted models, sane timings.

No timing assertions: the tests share a small machine; only shapes, signs and orderings are checked.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModel, BertConfig, BertForSequenceClassification

import prunekit.bench as bench_module
from prunekit.bench import (
    analytic_parameters,
    bench,
    count_parameters,
    flops_per_token,
    format_bench,
    measure_latency,
    peak_memory_mb,
)
from prunekit.compact.remove import compact
from prunekit.core.errors import UsageError
from prunekit.masks import LayerMask, MaskSet
from tiny import FAMILIES, tiny_config, tiny_model


@pytest.fixture(scope="module")
def bert_base():
    """bert-base-cased dimensions on the meta device: shapes without memory or init time."""
    config = BertConfig(vocab_size=28996, num_labels=2)
    with torch.device("meta"):
        model = BertForSequenceClassification(config)
    return model, config


def _half(n: int, stride: int = 1) -> torch.Tensor:
    """Keep every other unit (stride 1: the first half)."""
    if stride == 2:
        return torch.arange(n) % 2 == 0
    return torch.arange(n) < n // 2


def _half_masks(model, n_layers: int, heads: int, width: int, head_stride: int = 1) -> MaskSet:
    masks = MaskSet()
    for i in range(n_layers):
        masks.layers[i] = LayerMask(heads=_half(heads, head_stride), neurons=_half(width))
    return masks


def test_bert_base_counts_exact(bert_base):
    model, _ = bert_base
    counts = count_parameters(model)
    assert counts["total"] == 108_311_810
    assert counts["blocks"] == 85_054_464
    assert counts["embeddings"] + counts["blocks"] + counts["head"] == counts["total"]
    assert counts["blocks_nonzero"] is None  # meta tensors have no values


def test_analytic_matches_counted(bert_base):
    model, config = bert_base
    counted = count_parameters(model)
    assert analytic_parameters(config) == {k: counted[k] for k in ("embeddings", "blocks", "head", "total")}
    for family in ("bert", "roberta"):
        m = tiny_model(family)
        c = count_parameters(m)
        assert analytic_parameters(m.config) == {k: c[k] for k in ("embeddings", "blocks", "head", "total")}
    base = AutoModel.from_config(tiny_config("bert"))
    c = count_parameters(base)
    assert analytic_parameters(base.config, head="base") == {k: c[k] for k in ("embeddings", "blocks", "head", "total")}
    with pytest.raises(UsageError):
        analytic_parameters(config, head="qa")


@pytest.mark.parametrize("family", FAMILIES)
def test_split_sums_to_total(family):
    model = tiny_model(family)
    c = count_parameters(model)
    assert c["embeddings"] > 0 and c["blocks"] > 0
    assert c["embeddings"] + c["blocks"] + c["head"] == c["total"]
    assert c["total"] == sum(p.numel() for p in model.parameters())  # tied weights once
    assert 0 < c["blocks_nonzero"] <= c["blocks"]


def test_bert_base_flops(bert_base):
    model, config = bert_base
    s, d, f, n, h = 128, config.hidden_size, config.intermediate_size, config.num_hidden_layers, 12
    out = flops_per_token(model, s)
    assert out["blocks"] == n * (4 * 2 * d * d + 2 * 2 * d * f)
    assert out["attention_scores"] == n * h * 4 * s * (d // h)
    assert out["head"] == pytest.approx((2 * d * d + 2 * d * 2) / s)  # pooler and classifier: once per sequence
    assert out["total"] == pytest.approx(out["blocks"] + out["attention_scores"] + out["head"])


def test_flops_after_compaction_bert():
    cfg = tiny_config("bert")
    d, n_heads, f, n, labels = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, 3, cfg.num_labels
    dh, s = d // n_heads, 16
    model = tiny_model("bert")
    dense = flops_per_token(model, s)
    assert dense["blocks"] == n * (4 * 2 * d * n_heads * dh + 2 * 2 * d * f)
    assert dense["head"] == pytest.approx((2 * d * d + 2 * d * labels) / s)
    compact(model, _half_masks(model, n, n_heads, f))
    pruned = flops_per_token(model, s)
    # per layer: q, k, v lose half their output rows, o half its inputs; W1 half its rows, W2 half its inputs;
    # half the heads compute no scores
    expected = n * (4 * 2 * d * (n_heads // 2) * dh + 2 * 2 * d * (f // 2) + (n_heads // 2) * 4 * s * dh)
    assert dense["total"] - pruned["total"] == pytest.approx(expected)
    assert pruned["head"] == dense["head"]


def test_flops_after_compaction_llama_gqa():
    cfg = tiny_config("llama")
    d, n_heads, kv, dh, f = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, 48
    n, s = cfg.num_hidden_layers, 16
    model = tiny_model("llama")
    dense = flops_per_token(model, s)
    assert dense["blocks"] == n * (2 * 2 * d * n_heads * dh + 2 * 2 * d * kv * dh + 3 * 2 * d * f)
    assert dense["head"] == 2 * d * cfg.vocab_size  # lm_head runs on every token
    # one query head of each of the 2 KV groups: every KV head stays, q and o halve
    compact(model, _half_masks(model, n, n_heads, f, head_stride=2))
    pruned = flops_per_token(model, s)
    expected = n * (2 * 2 * d * (n_heads // 2) * dh + 3 * 2 * d * (f // 2) + (n_heads // 2) * 4 * s * dh)
    assert dense["total"] - pruned["total"] == pytest.approx(expected)


def test_scatter_linear_counts_kept_rows():
    cfg = tiny_config("bert")
    d, s = cfg.hidden_size, 8
    model = tiny_model("bert")
    dense = flops_per_token(model, s)
    masks = MaskSet()
    masks.layers[0] = LayerMask(attn_rows=_half(d))
    compact(model, masks)
    assert dense["blocks"] - flops_per_token(model, s)["blocks"] == 2 * (d // 2) * d


def test_dropped_sublayer_counts_nothing():
    cfg = tiny_config("gpt2")
    d, f, n_heads, s = cfg.n_embd, cfg.n_inner, cfg.n_head, 8
    model = tiny_model("gpt2")
    dense = flops_per_token(model, s)
    masks = MaskSet()
    masks.layers[1] = LayerMask(drop_attention=True, drop_ffn=True)
    compact(model, masks)
    pruned = flops_per_token(model, s)
    assert dense["blocks"] - pruned["blocks"] == 2 * 3 * d * d + 2 * d * d + 2 * 2 * d * f
    assert dense["attention_scores"] - pruned["attention_scores"] == n_heads * 4 * s * (d // n_heads)


def test_measure_latency_sane():
    model = tiny_model("bert").train()
    threads = torch.get_num_threads()
    out = measure_latency(model, batch=2, seq_len=8, vocab_size=97, warmup=1, repeats=2, threads=1)
    assert set(out) == {"median_ms", "p10_ms", "p90_ms", "iqr_ms", "throughput_seq_per_s"}
    assert 0 < out["p10_ms"] <= out["median_ms"] <= out["p90_ms"]
    assert out["iqr_ms"] >= 0 and out["throughput_seq_per_s"] > 0
    assert torch.get_num_threads() == threads and model.training  # restored


def _pruned_pair():
    reference = tiny_model("bert")
    model = compact(tiny_model("bert"), _half_masks(None, 3, 4, 48))
    return model, reference


def test_bench_ratios_and_json():
    model, reference = _pruned_pair()
    result = bench(model, reference, grid=((1, 8), (2, 16)), warmup=1, repeats=2, threads=1, memory=False)
    json.loads(json.dumps(result, allow_nan=False))
    assert result["params"]["ratio"]["blocks"] < 1
    assert result["params"]["ratio"]["embeddings"] == 1
    assert [f["seq_len"] for f in result["flops_per_token"]] == [8, 16]
    assert all(0 < f["ratio"]["total"] < 1 for f in result["flops_per_token"])
    assert [(r["batch"], r["seq_len"]) for r in result["latency"]] == [(1, 8), (2, 16)]
    for r in result["latency"]:
        assert r["speedup"] > 0 and r["throughput_ratio"] > 0
        assert r["dense"]["median_ms"] > 0 and r["pruned"]["median_ms"] > 0
    assert result["memory"] is None
    table = format_bench(result)
    assert isinstance(table, Table)
    assert [c.header for c in table.columns] == ["metric", "dense", "pruned", "ratio"]
    Console(file=io.StringIO(), width=160).print(table)


def test_bench_rejects_too_long_sequences():
    model, reference = _pruned_pair()
    with pytest.raises(UsageError, match="positions"):
        bench(model, reference, grid=((1, 128),), memory=False)


def test_bench_memory_result(monkeypatch):
    """bench's memory wiring, without spawning: the largest grid point, ratios, JSON, the table rows."""
    calls = []

    def fake_peak(source, **kw):
        calls.append(kw)
        mb = count_parameters(source)["total"] * 4 / 2**20
        return {"peak_mb": 300 + mb, "forward_mb": 1.0, "weights_mb": mb, "exact": True}

    monkeypatch.setattr(bench_module, "peak_memory_mb", fake_peak)
    model, reference = _pruned_pair()
    result = bench(model, reference, grid=((1, 8), (4, 32), (2, 16)), warmup=0, repeats=1, threads=1)
    mem = result["memory"]
    assert (mem["batch"], mem["seq_len"]) == (4, 32) and len(calls) == 2
    assert mem["ratio"]["weights_mb"] < 1 and mem["ratio"]["forward_mb"] == 1
    assert "exact" not in mem["ratio"]
    json.dumps(result, allow_nan=False)
    out = io.StringIO()
    Console(file=out, width=160).print(format_bench(result))
    assert "peak memory" in out.getvalue()


def test_peak_memory_child_process():
    """The one test that spawns a child (about 5-10 s: it imports torch): CPU peak RSS of one forward."""
    model = _pruned_pair()[0]
    out = peak_memory_mb(model, batch=4, seq_len=32, vocab_size=97, threads=1)
    assert out["peak_mb"] > 0 and out["forward_mb"] >= 0 and out["peak_mb"] >= out["forward_mb"]
    assert out["weights_mb"] == pytest.approx(sum(p.numel() * 4 for p in model.parameters()) / 2**20, rel=0.05)
