"""Layer-by-layer calibration: every block is measured on the inputs it sees in the model as pruned so far (the
blocks before it pruned, itself not yet), for every family; the calibration set of a language model is counted in
sequences of the calibration length, not in articles."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from prunekit.importance.calibration import input_statistics
from prunekit.importance.layerwise import calibrate_layer_by_layer, sublayer_stages
from prunekit.methods.base import create_method
from prunekit.tasks import get_task
from prunekit.tasks.base import calibration_batches
from prunekit.topology import describe, get_module, weight_view
from tiny import FAMILIES, tiny_inputs, tiny_model


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return x.t() @ x


def _batches(family: str) -> list[dict]:
    return [tiny_inputs(family), tiny_inputs(family, seed=1)]  # padding in the second row of each


@pytest.mark.parametrize("family", FAMILIES)
def test_without_pruning_every_block_sees_what_one_forward_gives(family):
    model = tiny_model(family)
    names = describe(model).prunable_linears()
    expected, tokens = input_statistics(model, names, _batches(family), _hessian, "test")
    seen: dict[str, torch.Tensor] = {}
    result = calibrate_layer_by_layer(model, _batches(family), _hessian, lambda spec, sums: seen.update(sums),
                                      what="test")  # fmt: skip
    assert result["tokens"] == tokens and sorted(seen) == sorted(names)
    for n in names:
        torch.testing.assert_close(seen[n], expected[n], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2", "mpnet"])
def test_each_block_is_measured_after_the_blocks_before_it_are_pruned(family):
    model = tiny_model(family)
    topo = describe(model)
    before = copy.deepcopy(model)
    seen: dict[str, torch.Tensor] = {}

    def halve(spec, sums):  # a crude pruning: every second input column of every linear of the block zeroed
        seen.update(sums)
        with torch.no_grad():
            for n in spec.linears():
                weight_view(get_module(model, n))[:, ::2] = 0

    calibrate_layer_by_layer(model, _batches(family), _hessian, halve, what="test")
    last = topo.blocks[-1]
    reference = copy.deepcopy(model)  # blocks before the last pruned, the last as it was when measured
    with torch.no_grad():
        for n in last.linears():
            weight_view(get_module(reference, n)).copy_(weight_view(get_module(before, n)))
    expected, _ = input_statistics(reference, last.linears(), _batches(family), _hessian, "test")
    for n in last.linears():
        torch.testing.assert_close(seen[n], expected[n], rtol=1e-6, atol=1e-8)
    dense, _ = input_statistics(before, last.linears(), _batches(family), _hessian, "test")
    assert not torch.allclose(seen[last.linears()[0]], dense[last.linears()[0]])  # the pruning did reach it


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_sublayer_stages_measure_each_linear_after_the_ones_before_it_in_its_block(family):
    model = tiny_model(family)
    topo = describe(model)
    first = topo.blocks[0]
    stages = sublayer_stages(first)
    assert [n for s in stages for n in s] == first.linears()  # every linear once, in the forward's order
    before = copy.deepcopy(model)
    seen: dict[str, torch.Tensor] = {}
    calls: list[list[str]] = []

    def halve(spec, sums):
        seen.update(sums)
        calls.append(sorted(sums))
        with torch.no_grad():
            for n in sums:
                weight_view(get_module(model, n))[:, ::2] = 0

    calibrate_layer_by_layer(model, _batches(family), _hessian, halve, what="test", stages=sublayer_stages)
    assert calls[: len(stages)] == [sorted(s) for s in stages]
    # the FFN output of block 0 is measured with everything before it in the block pruned, itself not yet
    reference = copy.deepcopy(model)
    out = first.ffn.output
    with torch.no_grad():
        weight_view(get_module(reference, out)).copy_(weight_view(get_module(before, out)))
    expected, _ = input_statistics(reference, [out], _batches(family), _hessian, "test")
    torch.testing.assert_close(seen[out], expected[out], rtol=1e-6, atol=1e-8)
    dense, _ = input_statistics(before, [out], _batches(family), _hessian, "test")
    assert not torch.allclose(seen[out], dense[out])  # without the stages it would be the dense block's input


@pytest.mark.parametrize("sequential", [True, False])
def test_the_method_reports_its_calibration(sequential):
    model = tiny_model("llama")
    batches = _batches("llama")
    method = create_method("oneshot", {"score": "sparsegpt", "sparsity": 0.5, "sequential": sequential})
    method.calibrate(model, batches)
    report = method.report()
    assert report["calibration_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    assert report["sequential"] is sequential and report["calibration_s"] >= 0
    if sequential:  # Linux: the resident-set high-water mark since calibration started
        assert report["calibration_peak_mb"] > 0
    for n in describe(model).prunable_linears():
        w = weight_view(get_module(model, n))
        assert w.eq(0).float().mean().item() == pytest.approx(0.5, abs=0.02)  # SparseGPT: per block of columns


def test_a_language_model_calibrates_on_sequences_not_documents():
    class Words:  # one token per word, ids by hash: enough for blocking
        eos_token_id = 1
        pad_token_id = 0

        def __call__(self, texts, add_special_tokens=False, verbose=False):
            return {"input_ids": [[2 + hash(w) % 90 for w in t.split()] for t in texts]}

    task = get_task("causal-lm")
    long_docs = Dataset.from_dict({"text": [" ".join(["word"] * 100)] * 10})  # 101 tokens each with the eos
    batches = list(calibration_batches(task, long_docs, Words(), 16, 4, 5)())
    assert sum(b["input_ids"].shape[0] for b in batches) == 5 and all(b["input_ids"].shape[1] == 16 for b in batches)
    short_lines = Dataset.from_dict({"text": ["a b c"] * 200})  # 4 tokens a line: 4 lines fill one block
    batches = list(calibration_batches(task, short_lines, Words(), 16, 4, 6)())
    assert sum(b["input_ids"].shape[0] for b in batches) == 6


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("score", "pattern"), [("wanda", "unstructured"), ("sparsegpt", "2:4")])
def test_every_family_is_pruned_layer_by_layer(family, score, pattern):
    model = tiny_model(family)
    method = create_method("oneshot", {"score": score, "pattern": pattern, "sparsity": 0.5})
    method.calibrate(model, _batches(family))
    for n in describe(model).prunable_linears():
        w = weight_view(get_module(model, n))
        if pattern == "2:4":
            assert w.ne(0).reshape(w.shape[0], -1, 4).sum(-1).le(2).all(), n
        else:
            assert w.ne(0).sum(1).le(w.shape[1] // 2).all(), n
    with torch.no_grad():
        assert torch.isfinite(model(**tiny_inputs(family)).logits).all()


def test_linears_reading_one_tensor_share_one_statistic():
    """q, k and v (and gate and up) read the same tensor: its X^T X is computed once per forward, not per linear."""
    model = tiny_model("llama")
    calls = []

    def counted(x):
        calls.append(x.shape[1])
        return x.t() @ x

    names = describe(model).prunable_linears()
    sums, _ = input_statistics(model, names, [tiny_inputs("llama")], counted, "test")
    blocks = describe(model).num_layers
    assert len(calls) == 4 * blocks  # attention input, o_proj input, MLP input, down_proj input per block
    q, k = describe(model).blocks[0].attention.q, describe(model).blocks[0].attention.k
    torch.testing.assert_close(sums[q], sums[k])
