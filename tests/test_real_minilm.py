"""The substrate on a real model: MiniLM-L6 (all-MiniLM-L6-v2 weights from its registry package)."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit
from prunekit.api import magnitude_prune
from prunekit.catalog import load_model
from prunekit.compact.remove import check_equal, compact
from prunekit.runs.export import export_onnx
from prunekit.topology import describe

pytestmark = pytest.mark.slow

SENTENCES = [
    "A gripping, beautifully shot film with a script that never lets up.",
    "Tedious and overlong; the cast seems as bored as the audience.",
    "It is neither very good nor very bad.",
]


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = load_model("minilm-l6", task="sequence-classification", num_labels=2)
    return model.eval(), tokenizer


def test_masked_equals_compacted_on_real_weights(minilm, tmp_path):
    model, tokenizer = minilm
    assert describe(model).num_layers == 6 and describe(model).blocks[0].attention.num_heads == 12
    inputs = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    masks = magnitude_prune(model, ["heads=0.5", "neurons=0.5", "rows=0.1"], scope="global")
    assert check_equal(model, masks, inputs, atol=1e-4) <= 1e-4

    compacted = compact(copy.deepcopy(model), masks)
    prunekit.save(compacted, tmp_path / "run", tokenizer, source_model="minilm-l6")
    loaded, tok = prunekit.load(tmp_path / "run", with_tokenizer=True)
    with torch.no_grad():
        expected = compacted(**inputs).logits
        torch.testing.assert_close(
            loaded(**dict(tok(SENTENCES, padding=True, return_tensors="pt"))).logits, expected, atol=1e-5, rtol=0
        )
    info = export_onnx(loaded, tmp_path / "model.onnx", example_inputs=inputs)
    assert info["max_abs_diff"] <= 1e-4
