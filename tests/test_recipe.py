"""Recipes: unknown keys and bad values are one clear line; --set overrides typed values."""

from __future__ import annotations

import pytest

from prunekit.core.errors import UsageError
from prunekit.recipe import apply_overrides, load_recipe, parse_recipe


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: minilm-l6\nmethod: {name: magnitude, pattern: [head, neuron], sparsity: 0.5}\n")
    r = load_recipe(path, ["train.epochs=1", "train.lr=2e-5", "data.max_examples=100", "method.scope=layer"])
    assert r.train.epochs == 1 and r.train.lr == 2e-5 and r.data.max_examples == 100
    assert r.method == {"name": "magnitude", "pattern": ["head", "neuron"], "sparsity": 0.5, "scope": "layer"}
    assert r.create_method().config.scope == "layer"
    assert r.model_dump(mode="json")["train"]["epochs"] == 1  # what the manifest records


@pytest.mark.parametrize(
    "tree,message",
    [
        ({"modle": "minilm-l6"}, "unknown key 'modle'"),
        ({"train": {"epoch": 2}}, "unknown key 'train.epoch'"),
        ({"train": {"epochs": -1}}, "'train.epochs'"),
        ({"train": {"lr": "fast"}}, "'train.lr'"),
        ({"train": {"mixed_precision": "fp8"}}, "'train.mixed_precision'"),
        ({"method": {"sparsity": 0.5}}, "method's name"),
        ({"method": {"name": "prune-it-all"}}, "unknown method 'prune-it-all'"),
        ({"method": {"name": "magnitude", "sparsity": 1.5}}, "sparsity"),
        ({"method": {"name": "magnitude", "pattern": "diagonal"}}, "pattern"),
        ({"method": {"name": "magnitude", "speed": 2}}, "unknown key 'speed'"),
        ({"data": {"validation_fraction": 1.2}}, "'data.validation_fraction'"),
    ],
)
def test_bad_recipes_are_one_clear_line(tree, message):
    with pytest.raises(UsageError, match=message) as info:
        parse_recipe(tree)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("item,message", [("train.epochs", "no '='"), ("=3", "empty"), ("model.x=1", "not a section")])
def test_bad_overrides(item, message):
    with pytest.raises(UsageError, match=message):
        apply_overrides({"model": "minilm-l6"}, [item])


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="mapping"):
        load_recipe(listy)


def test_every_example_recipe_validates():
    from pathlib import Path

    examples = sorted(Path(__file__).parents[1].glob("examples/*.yaml"))
    from prunekit.cli import demo_recipe_path

    for path in [*examples, demo_recipe_path()]:
        load_recipe(path)
