"""The method protocol the trainer drives (see ARCHITECTURE.md, "Method protocol").

A method decides masks; the trainer owns the loop. Every hook is optional: the base class does
nothing, so a method overrides only what it needs. Methods are registered by name so recipes,
the CLI and the Hugging Face integration find them the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from prunekit.errors import UsageError
from prunekit.masks import MaskSet, zero_masked
from prunekit.topology import Topology


class MethodConfig(BaseModel):
    """Base of every method's recipe section; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


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
    """

    name: ClassVar[str] = "base"
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # a method that learns masks wants the model fine-tuned first (dense teacher / starting point)
    needs_finetuned: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | dict | None = None) -> None:
        if config is None:
            config = {}
        self.config = config if isinstance(config, MethodConfig) else self.config_class.model_validate(config)
        self.model: nn.Module | None = None
        self.topo: Topology | None = None
        self.planned_steps: int | None = None  # a learning rate that must cover a distance in the stage needs it

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

    def enforce_masks(self, model: nn.Module) -> None:
        """Keep masked weights exactly zero (called after every optimizer step)."""
        masks = self.masks()
        if masks is not None:
            zero_masked(model, masks, self.topo)


class Dense(Method):
    """Plain fine-tuning: no pruning."""

    name = "dense"


REGISTRY: dict[str, type[Method]] = {"dense": Dense}


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    """Import the method modules so their @register lines run (lazy: keeps `import prunekit` light)."""
    import importlib

    for module in ("gradual", "movement", "l1", "neuroprune", "nxm", "mlpruning", "nas"):
        try:
            importlib.import_module(f"prunekit.methods.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"prunekit.methods.{module}":
                raise


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
