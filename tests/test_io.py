"""Run directories: a loaded model equals the saved one; failures leave nothing behind."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import prunekit
from prunekit.compact.remove import compact
from prunekit.core.errors import PrunekitError, UsageError
from prunekit.masks import LayerMask, MaskSet
from prunekit.runs.directory import staged
from prunekit.runs.io import read_manifest
from prunekit.topology import describe
from test_compact import random_masks
from tiny import FAMILIES, tiny_inputs, tiny_model


def _auto(family):
    return AutoModelForCausalLM if family in ("llama", "gpt2") else AutoModelForSequenceClassification


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_model_equals_saved_one(family, tmp_path):
    model = compact(tiny_model(family), random_masks(family, 4))
    heads0 = describe(model).blocks[0].attention.num_heads
    masks = MaskSet(layers={2: LayerMask(drop_ffn=True), 0: LayerMask(heads=torch.zeros(heads0, dtype=torch.bool))})
    model = compact(model, masks)
    prunekit.save(model, tmp_path / "run", method="test")
    loaded = prunekit.load(tmp_path / "run")
    saved = model.state_dict()
    got = loaded.state_dict()
    assert saved.keys() == got.keys()
    for key in saved:
        assert torch.equal(saved[key], got[key]), key
    x = tiny_inputs(family)
    torch.testing.assert_close(loaded(**x).logits, model(**x).logits, atol=1e-5, rtol=0)
    manifest = read_manifest(tmp_path / "run")
    assert manifest.method == "test" and not manifest.plain_loadable
    assert [e.heads for e in manifest.structure][0] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_uniformly_pruned_model_loads_with_plain_transformers(family, tmp_path):
    model = tiny_model(family)
    heads = torch.tensor([True, False, True, False]) if family == "llama" else None  # GQA config can say it
    masks = MaskSet(layers={i: LayerMask(neurons=torch.arange(48) % 3 != 0, heads=heads) for i in range(3)})
    compact(model, masks)
    prunekit.save(model, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "prunekit.json").read_text())["plain_loadable"]
    plain = _auto(family).from_pretrained(tmp_path / "run").eval()
    x = tiny_inputs(family)
    torch.testing.assert_close(plain(**x).logits, model(**x).logits, atol=1e-5, rtol=0)


def test_existing_output_is_refused_and_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = tiny_model("bert")
    (tmp_path / "exists").mkdir()
    with pytest.raises(UsageError, match="exists"):
        prunekit.save(model, tmp_path / "exists")

    def boom(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", boom)
    with pytest.raises(OSError):
        prunekit.save(model, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_staged_overwrite_replaces_only_a_prunekit_run(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "prunekit.json").write_text("{}")
    with staged(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "old").write_text("x")
    with pytest.raises(UsageError, match="not a prunekit run directory"), staged(tmp_path / "mine", overwrite=True):
        pass
    assert (tmp_path / "mine" / "old").read_text() == "x"


def test_corrupt_and_missing_files_are_clear_errors(tmp_path):
    prunekit.save(tiny_model("bert"), tmp_path / "run")
    weights = tmp_path / "run" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunekitError, match="corrupt or truncated"):
        prunekit.load(tmp_path / "run")
    weights.unlink()
    with pytest.raises(UsageError, match="no model.safetensors"):
        prunekit.load(tmp_path / "run")
    (tmp_path / "run" / "prunekit.json").write_text("{not json")
    with pytest.raises(PrunekitError, match="corrupt"):
        prunekit.load(tmp_path / "run")
    (tmp_path / "run" / "prunekit.json").write_text(json.dumps({"prunekit_version": "0"}))
    with pytest.raises(PrunekitError, match="invalid"):
        prunekit.load(tmp_path / "run")
    with pytest.raises(UsageError, match="does not exist"):
        prunekit.load(tmp_path / "nowhere")


def test_weights_are_safetensors_only(tmp_path):
    prunekit.save(tiny_model("gpt2"), tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert load_file(tmp_path / "run" / "model.safetensors")
