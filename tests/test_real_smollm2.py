"""The substrate on the real decoder: SmolLM2-135M (GGUF weights from its registry package, dequantised to fp32).

Guards the path the NeuroPrune decoder benchmarks take: catalog model -> GQA-aware head and neuron removal ->
save -> load. transformers 5 once recorded `quantization_config: gguf` in the cached config, after which no
model loaded from it could be saved.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.api import magnitude_prune
from prunekit.catalog import load_model
from prunekit.catalog.models import resolve_model
from prunekit.compact.remove import check_equal, compact
from prunekit.topology import describe

pytestmark = pytest.mark.slow

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Wikipedia is a free online encyclopedia"]


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_model("smollm2-135m", task="causal-lm")
    return model.eval(), tokenizer


def test_cached_config_carries_no_quantization_record(smollm2):
    config = json.loads((Path(resolve_model("smollm2-135m")) / "config.json").read_text())
    assert "quantization_config" not in config
    model, _ = smollm2
    assert getattr(model, "hf_quantizer", None) is None


def test_pruned_decoder_saves_and_loads_equal(smollm2, tmp_path):
    model, tokenizer = smollm2
    info = describe(model)
    assert info.num_layers == 30 and info.blocks[0].attention.num_heads == 9
    inputs = dict(tokenizer(TEXTS[:1], return_tensors="pt"))
    masks = magnitude_prune(model, ["heads=0.34", "neurons=0.5"], scope="layer")
    assert check_equal(model, masks, inputs, atol=1e-3) <= 1e-3

    compacted = compact(copy.deepcopy(model), masks)
    assert describe(compacted).blocks[0].attention.num_heads == 6  # one KV group of three query heads removed
    prunekit.save(compacted, tmp_path / "run", tokenizer, source_model="smollm2-135m")
    loaded, tok = prunekit.load(tmp_path / "run", with_tokenizer=True)
    with torch.no_grad():
        expected = compacted(**inputs).logits
        torch.testing.assert_close(
            loaded(**dict(tok(TEXTS[:1], return_tensors="pt"))).logits, expected, atol=1e-4, rtol=0
        )
