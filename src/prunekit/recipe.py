"""Recipes: one YAML file says what to prune, on what data, how long and with which method.

Validated by pydantic (unknown keys are errors), overridable from the CLI with `--set a.b=c`,
and saved resolved in the run manifest so a run can be repeated exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prunekit.core.errors import UsageError
from prunekit.methods.base import create_method, explain
from prunekit.methods.nas.config import SearchSpec
from prunekit.train.config import TrainConfig


class _Loader(yaml.SafeLoader):
    """YAML 1.1 without its base-60 numbers, so an N:M pattern such as `2:4` stays a string (not 124)."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (_INT, _FLOAT)]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = "rotten_tomatoes"  # a catalog name, or a CSV / JSONL / JSON file or saved datasets folder
    task: str | None = None  # needed for your own files unless it can be inferred from the columns
    columns: dict[str, str] | None = None  # canonical -> your column name, e.g. {text: review, label: stars}
    data_dir: str | None = None
    seed: int = Field(0, ge=0)
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_examples: int | None = Field(None, ge=1)  # cap on each split (seeded, stratified)
    max_train_examples: int | None = Field(None, ge=1)  # cap on the training split only; above max_examples it wins
    # drop rows of your own file that have no label (or, for text columns, no text) before splitting, instead of
    # refusing the file; the number dropped is recorded in the run manifest (split.dropped_rows)
    drop_invalid: bool = False


class DistillSpec(BaseModel):
    """Knowledge distillation; teacher `dense` = the dense model fine-tuned in this run."""

    model_config = ConfigDict(extra="forbid")
    teacher: str = "dense"
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(2.0, gt=0)
    hidden_weight: float = Field(0.0, ge=0)
    attention_weight: float = Field(0.0, ge=0)
    layer_map: list[int] | None = None
    hidden_norm: Literal["auto", "none", "teacher"] = "auto"  # see prunekit.train.distill


class BenchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    batch: list[int] = [1, 32]
    seq: int = Field(128, ge=1)
    repeats: int = Field(10, ge=1)
    warmup: int = Field(3, ge=0)
    threads: int | None = Field(None, ge=1)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "minilm-l6"  # catalog name, HF folder, hub id or a prunekit run directory
    data: DataSpec = DataSpec()
    finetune: TrainConfig | None = None  # dense fine-tuning first (the teacher and the dense reference)
    train: TrainConfig = TrainConfig()  # the pruning stage
    method: dict[str, Any] = {"name": "dense"}
    distill: DistillSpec | None = None
    bench: BenchSpec = BenchSpec()
    search: SearchSpec | None = None  # stage 2 of `prunekit search` (NAS structural pruning; method `nas`)
    # auto: N:M-sparse modules saved as values + indices (smaller; prunekit.load); dense: plain model.safetensors
    storage: Literal["auto", "dense"] = "auto"
    trust_remote_code: bool = False

    @field_validator("method")
    @classmethod
    def _method(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "name" not in v:
            raise ValueError("give the method's name, e.g. method: {name: magnitude, sparsity: 0.5}")
        return v

    def method_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k != "name"}

    def create_method(self):
        return create_method(self.method["name"], self.method_config())


def _set(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise UsageError(f"--set '{dotted}={raw}': the key is empty; write e.g. --set train.epochs=2")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise UsageError(f"--set '{dotted}': '{k}' is a value, not a section")
        node = child
    try:
        node[keys[-1]] = yaml_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise UsageError(
            f"--set '{dotted}={raw}': the value is not valid YAML at {_yaml_problem(exc)}; quote it, e.g. "
            f"--set '{dotted}=\"...\"'"
        ) from exc


def apply_overrides(tree: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set '{item}' has no '=': write key=value, e.g. --set train.epochs=2")
        _set(tree, key.strip(), value.strip())
    return tree


def parse_recipe(tree: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe tree; every error is one line naming the key."""
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as exc:
        raise UsageError(f"{source}: {explain(exc)}") from exc
    recipe.create_method()  # validates the method's own section now, not after an hour of fine-tuning
    return recipe


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where (1-based line and column) and what a YAML error is, as one line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = ": ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    what = what or str(exc).splitlines()[0]
    if mark is None:
        return what
    start = getattr(exc, "context_mark", None)
    if start is not None and start.line != mark.line:  # e.g. the unclosed bracket's line
        what += f" (it starts at line {start.line + 1}, column {start.column + 1})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe '{path}' not found: give a YAML file (see examples/)")
    try:
        tree = yaml_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"recipe '{path}' is not valid YAML at {_yaml_problem(exc)}") from exc
    if tree is None or tree == {}:  # an empty file, only comments, `null` or `{}`: not the default job
        demo = Path(__file__).parent / "recipes" / "demo.yaml"
        raise UsageError(
            f"recipe '{path}' is empty: give at least its model, data and method sections; start from a recipe in "
            f"examples/ or from the one `prunekit demo` runs ({demo})"
        )
    if not isinstance(tree, dict):
        raise UsageError(
            f"recipe '{path}' must be a mapping of sections (model, data, train, method, ...), not a "
            f"{_kind(tree)}: write one 'section: value' per line (see examples/)"
        )
    return parse_recipe(apply_overrides(tree, overrides), source=str(path))


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "single string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
