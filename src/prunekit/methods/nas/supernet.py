"""Stage 1 of NAS structural pruning (METHODS.md 4b): weight-sharing super-network training, as a trainer method.

Each optimizer step trains the sub-networks the strategy names on the same batch and sums their losses:

    standard       the full network only
    random         R random sub-networks (default R = 1)
    random_linear  a random sub-network with probability step / total steps, else the full network
    sandwich       full + R random (default 2) + smallest, all on the labels
    kd             full on the labels + R random (default 2) distilled from the full network's detached logits
    full           sandwich with in-place distillation (default): the full network on the labels, the others on
                   T^2 * KL to its logits (T = 1; MSE for regression heads)

The trainer's own forward is the step's first sub-network (the full one, or a random one for `random` /
`random_linear`); `loss_terms` runs the others. Sub-networks are masks applied during the forward
(`prunekit.importance.gates`); evaluation (model.eval()) always sees the full network. The sub-networks of a step are
a function of (seed, step), so a resumed run trains the same ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.importance.gates import GateHooks
from prunekit.masks import MaskSet
from prunekit.methods.base import Method, register
from prunekit.methods.nas.config import NASConfig
from prunekit.methods.nas.space import SearchSpace, make_space
from prunekit.topology import Topology
from prunekit.train.distill import kd_token_mask, logits_kd


@register
class NAS(Method):
    """Weight-sharing super-network training for NAS structural pruning (stage 1 of `prunekit search`)."""

    name = "nas"
    config_class = NASConfig
    needs_finetuned = True

    def attach(self, model: nn.Module, topo: Topology) -> None:
        super().attach(model, topo)
        self.space: SearchSpace = make_space(self.config.space, topo)
        self.gates = GateHooks(model, topo)
        self._forced: list[MaskSet | None] = []
        self._step, self._total = 0, None
        self._plan_cache: tuple[int, list] | None = None
        self._pre = model.register_forward_pre_hook(self._select, with_kwargs=True)
        self._full_masks = MaskSet()

    # ------------------------------------------------------------ which sub-network runs

    def _select(self, module: nn.Module, args, kwargs):
        if self._forced:
            self.gates.set(self._forced[-1])
        elif module.training:
            self.gates.set(self.plan(self._step)[0][1])
        else:
            self.gates.set(None)
        return None

    @contextmanager
    def use(self, masks: MaskSet | None) -> Iterator[None]:
        """Every forward inside runs this sub-network (None: the full one), in train or eval mode."""
        self._forced.append(masks)
        try:
            yield
        finally:
            self._forced.pop()

    @contextmanager
    def detached(self) -> Iterator[None]:
        """The plain model, without hooks (to deepcopy or compact it), then the hooks again."""
        self.gates.remove()
        self._pre.remove()
        try:
            yield
        finally:
            self.gates.attach()
            self._pre = self.model.register_forward_pre_hook(self._select, with_kwargs=True)

    def plan(self, step: int) -> list[tuple[str, MaskSet | None]]:
        """[(kind, masks)] of one step: the first runs in the trainer's forward; kind says how it is trained."""
        if self._plan_cache is not None and self._plan_cache[0] == step:
            return self._plan_cache[1]
        cfg, space = self.config, self.space
        rng = np.random.default_rng([cfg.seed, step])
        rand = lambda: space.masks(space.sample(rng))  # noqa: E731
        smallest = space.masks(space.smallest())
        r = cfg.random_count
        if cfg.strategy == "standard":
            plan = [("full", None)]
        elif cfg.strategy == "random":
            plan = [("labels", rand()) for _ in range(r)]
        elif cfg.strategy == "random_linear":
            p = step / self._total if self._total else 0.0
            plan = [("labels", rand()) if rng.random() < p else ("full", None)]
        elif cfg.strategy == "sandwich":
            plan = [("full", None)] + [("labels", rand()) for _ in range(r)] + [("labels", smallest)]
        elif cfg.strategy == "kd":
            plan = [("full", None)] + [("distill", rand()) for _ in range(r)]
        else:  # full: sandwich + in-place distillation
            plan = [("full", None)] + [("distill", rand()) for _ in range(r)] + [("distill", smallest)]
        self._plan_cache = (step, plan)
        return plan

    # ------------------------------------------------------------ trainer protocol

    def loss_terms(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        plan = self.plan(self._step)
        terms: dict[str, torch.Tensor] = {}
        for j, (kind, masks) in enumerate(plan[1:], start=1):
            key = (
                "sub_smallest"
                if (j == len(plan) - 1 and self.config.strategy in ("sandwich", "full"))
                else "sub_random"
            )
            with self.use(masks):
                out = model(**batch)
            if kind == "distill":
                logits = getattr(out, "logits", None)
                mask = None
                if logits is not None and logits.dim() == 3:  # token-level: only positions the labels score
                    mask = kd_token_mask(batch.get("labels"), batch.get("attention_mask"))
                loss = logits_kd(out, outputs, self.config.temperature, mask)
            else:
                loss = out.loss
            terms[key] = terms[key] + loss if key in terms else loss
        return terms

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        self._step, self._total = step, total_steps
        return {}

    def masks(self) -> MaskSet | None:
        return None  # the super-network keeps every weight; sub-networks exist only in the forward

    def finalize(self, model: nn.Module) -> MaskSet | None:
        """Trained alone (`prunekit prune`), the result is the full super-network: hooks off, nothing to cut."""
        warnings.warn(
            "method 'nas' trains the weight-sharing super-network only (saved whole): run `prunekit search` "
            "for its Pareto set of sub-networks",
            stacklevel=2,
        )
        self.remove()
        return None

    def remove(self) -> None:
        self.gates.remove()
        self._pre.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "total": self._total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step, self._total = int(state.get("step", 0)), state.get("total")
        self._plan_cache = None
