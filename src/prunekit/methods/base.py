"""The method protocol the trainer and the pipeline drive (see ARCHITECTURE.md, "Method protocol").

A method decides masks; the trainer owns the loop. Every hook and capability is declared here with a no-op
default, so a method overrides only what it needs and no caller probes for attributes. Methods are registered by
name so recipes, the CLI, `prunekit compare` and the Hugging Face integration find them the same way; every module
and folder under `prunekit/methods/` is imported to register (also a `prunekit/methods/<name>/` folder on another
sys.path entry: a method of your own is one folder, nothing else to edit).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

import prunekit.methods as package
from prunekit.core.errors import UsageError
from prunekit.masks import MaskSet, zero_masked
from prunekit.patterns import check_block, nm_mask, parse_pattern
from prunekit.topology import Topology, describe, get_module, linear_shape


class MethodConfig(BaseModel):
    """Base of every method's recipe section; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class WarmStartConfig(MethodConfig):
    """Fields of the methods with learned unit scores (movement, MLPruning) that can start them from importance
    measured on calibration data (prunekit.importance.warm_start)."""

    score_from: Literal["none", "taylor", "taylor-elementwise", "fisher", "sensitivity", "activation", "magnitude"] = (
        Field(
            "none",
            description="Start every unit's learned score from this importance criterion on calibration batches of "
            "the training split (its rank in its layer, scaled to [0, score_from_scale]); none: all start equal.",
        )
    )
    score_from_scale: float = Field(
        1.0, gt=0, description="Spread of the starting scores: about the score steps needed to overturn their order."
    )
    calibration_examples: int = Field(512, ge=1, description="Training sequences `score_from` is measured on (a "
                                      "language-model split gives blocks of max_length tokens).")  # fmt: skip


@dataclass
class NextStage:
    """A further training stage of a multi-stage method: its name and its distillation teacher."""

    stage: str
    teacher: nn.Module


class Method:
    """One pruning method. Lifecycle, as the trainer calls it:

    attach(model, topo)            before the optimizer is built (create scores, masks, ADMM state)
    planned_steps = T              the stage's optimizer steps, set before parameter_groups() (None: unknown)
    parameter_groups()             extra optimizer groups (scores, thresholds) with their own lr
    loss_terms(model, batch, out)  named tensors added to the task loss (logged separately)
    on_step(step, total)           after each optimizer step; returns values to log
    on_epoch_end(epoch)            e.g. head merging, ADMM Z/U updates; returns values to log
    masks()                        the current masks (None: nothing masked)
    finalize(model)                the masks to compact at the end (weights already final)
    state_dict / load_state_dict   method state, part of every checkpoint
    selectable(step, total)        whether a checkpoint at `step` may be kept as the best (masks final by then)
    final_structure(step, total)   heads / neurons / rows whose masks are final now: the trainer removes them at
                                   once, so the rest of the stage trains the smaller model (None: nothing yet)
    structure_removed(model, topo) after that removal: masks from now on are of the smaller model

    and as the pipeline calls it:

    check_model(model)             refuse a model the method cannot prune, before any training
    calibration_examples()         training examples `calibrate` wants (0: it is not called)
    calibration_length()           tokens per calibration sequence (None: the recipe's train.max_length)
    calibrate(model, batches)      one-shot methods: measure what they need on calibration batches (dense model)
    prune_before_training()        masks compacted before the training stage, so recovery trains the small model
    after_compact(model, batches)  one-shot methods: adjust the compacted model on calibration batches (a repair)
    next_stage(model)              multi-stage methods: the next stage to train (None: done)
    save_plots(directory)          the method's own figures, beside the run's
    report()                       the method's own results for the manifest (`method_report`)
    """

    name: ClassVar[str] = "base"
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # a method that learns masks wants the model fine-tuned first (dense teacher / starting point)
    needs_finetuned: ClassVar[bool] = False
    # a reference point (dense, magnitude, movement, L1, ASP) rather than one of the methods prunekit implements
    is_baseline: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | dict | None = None) -> None:
        if config is None:
            config = {}
        self.config = config if isinstance(config, MethodConfig) else self.config_class.model_validate(config)
        self.model: nn.Module | None = None
        self.topo: Topology | None = None
        self.planned_steps: int | None = None  # a learning rate that must cover a distance in the stage needs it
        self.progress = False  # the pipeline's --progress: whether a long calibration shows its own bar

    def attach(self, model: nn.Module, topo: Topology) -> None:
        self.model, self.topo = model, topo

    def parameter_groups(self) -> list[dict[str, Any]]:
        return []

    def loss_terms(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        return {}

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def masks(self) -> MaskSet | None:
        return None

    def finalize(self, model: nn.Module) -> MaskSet | None:
        return self.masks()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def selectable(self, step: int, total_steps: int) -> bool:
        return True

    def final_structure(self, step: int, total_steps: int) -> MaskSet | None:
        return None

    def structure_removed(self, model: nn.Module, topo: Topology) -> None:
        self.model, self.topo = model, topo

    def check_model(self, model: nn.Module) -> None:
        pass

    def calibration_examples(self) -> int:
        return 0

    def calibration_length(self) -> int | None:
        return None

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        pass

    def prune_before_training(self) -> MaskSet | None:
        return None

    def after_compact(self, model: nn.Module, batches: Callable[[], Iterable[dict]]) -> None:
        pass

    def next_stage(self, model: nn.Module) -> NextStage | None:
        return None

    def save_plots(self, directory: str | Path) -> list[Path]:
        return []

    def report(self) -> dict[str, Any] | None:
        return None

    def enforce_masks(self, model: nn.Module) -> None:
        """Keep masked weights exactly zero (called after every optimizer step)."""
        masks = self.masks()
        if masks is not None:
            zero_masked(model, masks, self.topo)


# name -> method class, filled by @register as the method modules are imported (on first use: _load_builtin);
# `dense` (plain fine-tuning) is methods/baselines/dense.py
REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


_LOADED: set[str] = set()


def _load_builtin() -> None:
    """Import every module and folder under prunekit.methods so their @register lines run (on first use: keeps
    `import prunekit` light). A `prunekit/methods/<name>/` folder under any sys.path entry (a method of your own,
    e.g. on PYTHONPATH) registers too; the installed modules come first."""
    for entry in sys.path:  # `prunekit/methods/` folders elsewhere on the path: methods of one's own
        if not isinstance(entry, str) or os.path.exists(os.path.join(entry, "prunekit", "__init__.py")):
            continue  # a prunekit installation (this one, or a second checkout on the path), not a folder of methods
        folder = os.path.join(entry, "prunekit", "methods")
        if os.path.isdir(folder) and not any(os.path.samefile(folder, p) for p in package.__path__):
            package.__path__.append(folder)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        if info.name in _LOADED or info.name == __name__:
            continue
        _LOADED.add(info.name)
        importlib.import_module(info.name)


def method_class(name: str) -> type[Method] | None:
    """The registered class of a method name (None for a name no installed method has)."""
    _load_builtin()
    return REGISTRY.get(name)


def is_baseline(name: str) -> bool:
    """Whether a run's method is a baseline; an unknown name (a run made with a method not installed here)
    counts as a method."""
    cls = method_class(name)
    return cls is not None and cls.is_baseline


def check_patterns_fit(model: nn.Module, patterns: str | list | None, pad_tail: bool = False) -> None:
    """Fine-grained patterns (N:M, B x B blocks) must fit every prunable matrix: said before training, not after."""
    names = [patterns] if isinstance(patterns, str) else list(patterns or [])
    parsed = [parse_pattern(p) for p in names if isinstance(p, str)]
    if not any(p.kind in ("nm", "block") for p in parsed):
        return
    for name in describe(model).prunable_linears():
        shape = linear_shape(get_module(model, name))
        for p in parsed:
            if p.kind == "nm":
                nm_mask(torch.zeros(1, shape[1]), p.n, p.m, pad_tail)
            elif p.kind == "block":
                check_block(shape, p.block, name)


def method_names() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)


def create_method(name: str, config: dict | None = None) -> Method:
    _load_builtin()
    if name not in REGISTRY:
        raise UsageError(f"unknown method '{name}': use one of {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name](config or {})
    except ValidationError as exc:
        raise UsageError(f"method '{name}': {explain(exc)}") from exc


PATTERN_KEYS = ("pattern", "patterns")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_pattern(exc: ValidationError) -> str | None:
    """The one-line explanation when a pattern field got a number: YAML reads an unquoted 0x32 as 50, 24 as 24."""
    for err in exc.errors():
        keys = [x for x in err["loc"] if isinstance(x, str)]
        key = next((k for k in reversed(keys) if k in PATTERN_KEYS), None)
        if key is None:
            continue
        value = err.get("input")
        numbers = [v for v in (value if isinstance(value, list) else [value]) if _is_number(v)]
        if numbers:
            where = ".".join(keys[: keys.index(key) + 1])
            return (
                f"'{where}' got the number {numbers[0]!r}: YAML read the unquoted value as a number (0x32 is hex 50, "
                f'1e3 is 1000.0); a pattern is a string, so quote it, e.g. {key}: "2:4"'
            )
    return None


def explain(exc: ValidationError) -> str:
    """A pydantic error as one line: where, and what is wrong."""
    if (numeric := _numeric_pattern(exc)) is not None:
        return numeric
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "value"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}' (check the spelling; see the method's documented fields)"
    return f"'{where}': {first['msg']}"
