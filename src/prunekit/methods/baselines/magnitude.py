"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), driven by the trainer.

Dense warm-up until `start` (a fraction of the run's optimizer steps), then the masks are recomputed
from the current weights every `update_every` steps at the cubic schedule's sparsity until `end`, then
masked fine-tuning with the final mask. Masked weights are zeroed after every step (enforce_masks), so
a recomputed mask ranks them lowest and they stay pruned. The cubic schedule and its bookkeeping are
shared with movement pruning (methods/movement.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.importance.magnitude import MagnitudeConfig, magnitude_masks
from prunekit.masks import MaskSet, element_masks, maskset_from_state, maskset_state, merge, zero_masked
from prunekit.methods.base import Method, check_patterns_fit, register
from prunekit.methods.baselines.config import GradualMagnitudeConfig, ScheduleConfig
from prunekit.patterns import parse_pattern
from prunekit.topology import Topology, get_module, weight_view


def cubic_sparsity(
    step: float, total_steps: int, final: float, initial: float = 0.0, start: float = 0.1, end: float = 0.7
) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3, with t0 = start * total and
    t1 = end * total: prunes fast while many weights are redundant and slowly near the target, so the
    network can recover. 0 before t0 (dense warm-up), s_f from t1 on."""
    total = max(int(total_steps), 1)
    t0, t1 = start * total, end * total
    if step < t0:
        return 0.0
    if step >= t1 or t1 <= t0:
        return float(final)
    frac = (step - t0) / (t1 - t0)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


class GradualSchedule:
    """When masks are due: the first step at or after `start`, every `update_every` steps after the last
    update, and once at the first step at or after `end`, after which the masks are frozen."""

    def __init__(self, config: ScheduleConfig, default_every: Callable[[int], int]) -> None:
        self.config = config
        self.default_every = default_every
        self.last_update: int | None = None
        self.done = False

    def every(self, total_steps: int) -> int:
        return self.config.update_every or max(1, self.default_every(max(int(total_steps), 1)))

    def sparsity(self, step: int, total_steps: int) -> float:
        c = self.config
        return cubic_sparsity(step, total_steps, c.sparsity, c.initial_sparsity, c.start, c.end)

    def due(self, step: int, total_steps: int) -> bool:
        total = max(int(total_steps), 1)
        if self.done or step < self.config.start * total:
            return False
        if self.last_update is None or step >= self.config.end * total:
            return True
        return step - self.last_update >= self.every(total)

    def mark(self, step: int, total_steps: int) -> None:
        self.last_update = step
        self.done = step >= self.config.end * max(int(total_steps), 1)

    def state_dict(self) -> dict[str, Any]:
        return {"last_update": self.last_update, "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_update = state["last_update"]
        self.done = bool(state["done"])


@register
class GradualMagnitude(Method):
    """Zhu & Gupta gradual magnitude pruning at any pattern; masks are recomputed with magnitude_masks."""

    name = "magnitude"
    config_class = GradualMagnitudeConfig
    is_baseline = True
    config: GradualMagnitudeConfig

    def __init__(self, config: GradualMagnitudeConfig | dict | None = None) -> None:
        super().__init__(config)
        # default: about 50 mask updates over the whole run (30 between the default start and end)
        self.schedule = GradualSchedule(self.config, lambda total: total // 50)
        self.sparsity = 0.0
        self._masks: dict[str, MaskSet] = {}
        self._merged: MaskSet | None = None
        self._pruned: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._removed = False  # train_small: the final structure was removed from the model

    def selectable(self, step: int, total_steps: int) -> bool:
        return step >= self.config.end * total_steps  # masks final from `end` on

    def check_model(self, model: nn.Module) -> None:
        check_patterns_fit(model, self.config.pattern, self.config.pad_tail)

    def attach(self, model: nn.Module, topo: Topology) -> None:
        super().attach(model, topo)
        for p in self.config.pattern:  # fail now, not after the warm-up, on shapes a pattern cannot take
            if parse_pattern(p).fine_grained:
                self._compute(p, 0.0)

    def _compute(self, pattern: str, sparsity: float) -> MaskSet:
        c = self.config
        cfg = MagnitudeConfig(
            pattern=pattern,
            sparsity=sparsity,
            scope=c.scope,
            pad_tail=c.pad_tail,
            min_heads=c.min_heads,
            min_neurons=c.min_neurons,
        )
        return magnitude_masks(self.model, cfg, self.topo)

    def _update(self, sparsity: float) -> None:
        for p in self.config.pattern:
            if parse_pattern(p).kind == "nm":
                if p not in self._masks:  # N:M fixes its own sparsity: one mask, at `start`
                    self._masks[p] = self._compute(p, 0.0)
            else:
                self._masks[p] = self._compute(p, sparsity)
        self.sparsity = sparsity
        self._merged = merge(*self._masks.values())
        self._pruned = None

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        if self.schedule.due(step, total_steps):
            self._update(self.schedule.sparsity(step, total_steps))
            self.schedule.mark(step, total_steps)
        return {"sparsity": self.sparsity}

    def masks(self) -> MaskSet | None:
        return self._merged

    def _train_small(self) -> bool:
        """Only all-structural patterns: a fine-grained sparsity is a fraction of the full-size model's weights."""
        return self.config.train_small and not any(parse_pattern(p).fine_grained for p in self.config.pattern)

    def final_structure(self, step: int, total_steps: int) -> MaskSet | None:
        if self._removed or not self.schedule.done or not self._train_small() or self._merged is None:
            return None
        return self._merged

    def structure_removed(self, model: nn.Module, topo: Topology) -> None:
        super().structure_removed(model, topo)
        self._removed, self._masks, self._merged, self._pruned = True, {}, None, None

    @torch.no_grad()
    def enforce_masks(self, model: nn.Module) -> None:
        """Zero what the masks prune; the element masks are cached between updates (this runs every step)."""
        if self._merged is None:
            return
        if self._pruned is None:
            self._pruned = {}
            for name, (w, b) in element_masks(model, self._merged, self.topo).items():
                if not (bool(w.all()) and bool(b.all())):
                    self._pruned[name] = (~w, ~b)
        for name, (w, b) in self._pruned.items():
            module = get_module(model, name)
            weight_view(module).masked_fill_(w.to(module.weight.device), 0.0)
            if getattr(module, "bias", None) is not None:
                module.bias.masked_fill_(b.to(module.bias.device), 0.0)

    def finalize(self, model: nn.Module) -> MaskSet | None:
        """The final masks. A run stopped before `end` is cut to the final sparsity now, so the requested
        sparsity always holds."""
        if self._removed:  # removed during training (train_small): nothing left to mask
            return None
        if not self.schedule.done:
            self.model = model
            self._update(self.config.sparsity)
            self.schedule.done = True
        zero_masked(model, self._merged, self.topo)
        return self._merged

    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.state_dict(),
            "sparsity": self.sparsity,
            "masks": {p: maskset_state(m) for p, m in self._masks.items()},
            "removed": self._removed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.sparsity = float(state["sparsity"])
        self._masks = {p: maskset_from_state(m) for p, m in state["masks"].items()}
        self._merged = merge(*self._masks.values()) if self._masks else None
        self._pruned = None
        self._removed = bool(state.get("removed", False))
