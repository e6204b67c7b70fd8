"""Movement pruning (Sanh, Wolf & Rush 2020), hard Top-K variant, driven by the trainer.

Every targeted weight W gets learned importance scores S (init 0; heads / neurons can start from importance
measured on data, `score_from`). The forward uses W' = W * TopK(S) and
the backward is straight-through: dL/dS = dL/dW' * W, so S accumulates -W * dL/dW' and keeps the
weights moving away from zero rather than the large ones. The kept fraction follows the cubic schedule
of gradual magnitude pruning. Scores are per weight (unstructured, N:M, per B x B tile for blocks) or
per head / FFN neuron; a head or neuron mask gates the unit's columns of the output projection (Wo, W2),
which silences the unit exactly, so dL/dS is the movement score of the unit's output weights.

The masked forward is a `torch.nn.utils.parametrize` parametrization of each targeted weight, holding
the scores (an nn.Parameter) and the current mask (a persistent buffer): both live inside the model, so
DDP / accelerate see the scores and `model.state_dict()` checkpoints them. `finalize` removes the
parametrizations, leaving plain weights with the masked entries exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.importance import keep_counts, select_heads
from prunekit.importance.warm_start import data_unit_scores, rank_init
from prunekit.masks import MaskSet, zero_masked
from prunekit.methods.base import Method, check_patterns_fit, register
from prunekit.methods.baselines.config import MovementConfig
from prunekit.methods.baselines.magnitude import GradualSchedule
from prunekit.patterns import check_block, kept_count, nm_mask, parse_pattern, topk_mask
from prunekit.topology import Topology, get_module, weight_view
from prunekit.topology.base import is_conv1d


class ScoreMask(nn.Module):
    """Parametrization W -> W * mask with a straight-through gradient to `scores`.

    `scores` and `mask` have the score shape: (out, in) for `element`, (out/B0, in/B1) for `block`, one per
    unit for `column` (a unit owns `width` consecutive input columns of the (out, in) weight). `transpose`
    is set for weights stored (in, out) (GPT-2's Conv1D): masks are always built in (out, in).
    """

    def __init__(
        self,
        kind: str,
        shape: tuple[int, ...],
        *,
        block: tuple[int, int] = (1, 1),
        width: int = 1,
        transpose: bool = False,
        init: float = 0.0,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.kind, self.block, self.width, self.transpose = kind, tuple(block), int(width), bool(transpose)
        self.scores = nn.Parameter(torch.full(shape, float(init), device=device))
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))

    def expand(self, g: torch.Tensor) -> torch.Tensor:
        """Score-shaped values to the (out, in) weight shape (or a broadcastable (1, in) row)."""
        if self.kind == "block":
            return g.repeat_interleave(self.block[0], 0).repeat_interleave(self.block[1], 1)
        if self.kind == "column":
            return g.repeat_interleave(self.width)[None, :]
        return g

    def gate(self) -> torch.Tensor:
        # value: the mask exactly (scores - scores.detach() is 0); gradient: d gate / d scores = 1
        return self.expand(self.mask.to(self.scores.dtype) + (self.scores - self.scores.detach()))

    def element_mask(self, out_features: int | None = None) -> torch.Tensor:
        """The bool (out, in) mask this parametrization applies (`column` masks need `out_features`)."""
        m = self.expand(self.mask)
        return m.expand(out_features, -1) if self.kind == "column" else m

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        g = self.gate().to(weight.dtype)
        return weight * (g.T if self.transpose else g)


def _nm_top(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores of every M consecutive inputs (scores can be negative: no |.| here)."""
    out_f, in_f = scores.shape
    groups = scores.reshape(out_f, in_f // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(out_f, in_f)


# (module name, block index, parametrization) for each targeted weight of one pattern
Entry = tuple[str, int, ScoreMask]


@register
class Movement(Method):
    """Movement pruning with learned scores and a cubic kept-fraction schedule (default: a mask update
    every step, as the paper recomputes Top-K at every forward)."""

    name = "movement"
    config_class = MovementConfig
    is_baseline = True

    def selectable(self, step: int, total_steps: int) -> bool:
        return step >= self.config.end * total_steps  # masks final from `end` on

    def check_model(self, model: nn.Module) -> None:
        check_patterns_fit(model, self.config.pattern)

    config: MovementConfig

    def __init__(self, config: MovementConfig | dict | None = None) -> None:
        super().__init__(config)
        self.schedule = GradualSchedule(self.config, lambda total: 1)
        self.sparsity = 0.0
        self._entries: dict[str, list[Entry]] = {}
        self._final: MaskSet | None = None
        self._removed = False  # train_small: the final heads / neurons were removed from the model
        self._warm: dict[tuple[int, str], torch.Tensor] = {}  # (layer, heads / neurons) -> data scores (score_from)

    def calibration_examples(self) -> int:
        return self.config.calibration_examples if self.config.score_from != "none" else 0

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        kinds = {"heads" if parse_pattern(p).kind == "head" else "neurons" for p in self.config.pattern}
        self._warm = data_unit_scores(model, self.config.score_from, batches, kinds)

    def attach(self, model: nn.Module, topo: Topology) -> None:
        super().attach(model, topo)
        self._final = None
        self._entries = {p: self._parametrize(model, topo, p) for p in self.config.pattern}

    def _parametrize(self, model: nn.Module, topo: Topology, pattern: str) -> list[Entry]:
        p = parse_pattern(pattern)
        init = self.config.score_init
        targets: list[tuple[str, int, str, tuple[int, ...], dict]] = []
        if p.kind == "head":
            for b in topo.blocks:
                a = b.attention
                if a is not None and a.num_heads:
                    targets.append((a.o, b.index, "column", (a.num_heads,), {"width": a.head_dim}))
        elif p.kind == "neuron":
            for b in topo.blocks:
                if b.ffn is not None and b.ffn.width:
                    targets.append((b.ffn.output, b.index, "column", (b.ffn.width,), {}))
        else:
            for b in topo.blocks:
                for name in b.linears():
                    out_f, in_f = weight_view(get_module(model, name)).shape
                    if p.kind == "block":
                        check_block((out_f, in_f), p.block, name)
                        shape, extra = (out_f // p.block[0], in_f // p.block[1]), {"block": p.block}
                        targets.append((name, b.index, "block", shape, extra))
                    else:
                        if p.kind == "nm":  # refuses in_features not divisible by M, with the fix in the message
                            nm_mask(torch.zeros(1, in_f), p.n, p.m)
                        targets.append((name, b.index, "element", (out_f, in_f), {}))
        entries = []
        unit_kind = {"head": "heads", "neuron": "neurons"}.get(p.kind)
        for name, layer, kind, shape, extra in targets:
            module = get_module(model, name)
            device = module.weight.device
            pm = ScoreMask(kind, shape, transpose=is_conv1d(module), init=init, device=device, **extra)
            warm = self._warm.get((layer, unit_kind)) if unit_kind else None
            if warm is not None:  # score_from: the data's order (a checkpoint's scores replace these on resume)
                with torch.no_grad():
                    pm.scores.add_(rank_init(warm, self.config.score_from_scale).to(device))
            parametrize.register_parametrization(module, "weight", pm)
            entries.append((name, layer, pm))
        return entries

    def parameter_groups(self) -> list[dict[str, Any]]:
        scores = [pm.scores for entries in self._entries.values() for _, _, pm in entries]
        if not scores:
            return []
        return [{"params": scores, "lr": self.config.score_lr, "weight_decay": 0.0, "name": "movement_scores"}]

    @torch.no_grad()
    def _update(self, pattern: str, entries: list[Entry], sparsity: float) -> None:
        p, c = parse_pattern(pattern), self.config
        scores = [pm.scores.detach() for _, _, pm in entries]
        if p.kind == "nm":
            new = [_nm_top(s, p.n, p.m) for s in scores]
        elif p.kind in ("head", "neuron"):
            minimum = c.min_heads if p.kind == "head" else c.min_neurons
            counts = keep_counts(scores, sparsity, c.scope, minimum)
            new = []
            for (_, layer, _), s, k in zip(entries, scores, counts, strict=True):
                a = self.topo.blocks[layer].attention
                gqa = p.kind == "head" and a.group_size > 1  # same count per KV group, so it compacts
                new.append(select_heads(s, k, a.num_kv_heads) if gqa else topk_mask(s, k))
        elif c.scope == "layer":
            new = [topk_mask(s, kept_count(s.numel(), sparsity)) for s in scores]
        else:
            flat = torch.cat([s.flatten() for s in scores])
            keep = topk_mask(flat, kept_count(flat.numel(), sparsity))
            new = list(keep.split([s.numel() for s in scores]))
        for (_, _, pm), m in zip(entries, new, strict=True):
            pm.mask.copy_(m.view_as(pm.mask))

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        if self._entries and self.schedule.due(step, total_steps):
            self.sparsity = self.schedule.sparsity(step, total_steps)
            for pattern, entries in self._entries.items():
                self._update(pattern, entries, self.sparsity)
            self.schedule.mark(step, total_steps)
        return {"sparsity": self.sparsity}

    def masks(self) -> MaskSet | None:
        if self._final is not None:
            return self._final
        if not self._entries:
            return None
        masks = MaskSet()
        for pattern, entries in self._entries.items():
            kind = parse_pattern(pattern).kind
            for name, layer, pm in entries:
                if kind == "head":
                    masks.layer(layer).heads = pm.mask.clone()
                elif kind == "neuron":
                    masks.layer(layer).neurons = pm.mask.clone()
                else:
                    masks.weights[name] = pm.element_mask().clone()
                    masks.patterns[name] = pattern
        return masks

    def final_structure(self, step: int, total_steps: int) -> MaskSet | None:
        """At `end` with only head / neuron patterns (train_small): plain weights, and the masks to remove now."""
        structural = all(parse_pattern(p).kind in ("head", "neuron") for p in self.config.pattern)
        if self._removed or not self._entries or not self.schedule.done or not (self.config.train_small and structural):
            return None
        return self.finalize(self.model)

    def structure_removed(self, model: nn.Module, topo: Topology) -> None:
        super().structure_removed(model, topo)
        self._removed, self._final, self._entries = True, None, {}

    def enforce_masks(self, model: nn.Module) -> None:
        """Nothing to write: the parametrized forward masks, and pruned weights may come back while the
        scores still move (the method's point)."""

    def finalize(self, model: nn.Module) -> MaskSet | None:
        """Remove the parametrizations (plain weights = W * mask, masked entries exactly zero) and return
        the masks; heads and neurons also get their remaining weights (Q/K/V rows, W1 rows) zeroed, which
        changes nothing in the function since their output columns are already zero."""
        if self._final is not None or self._removed:
            return self._final
        masks = self.masks()
        if masks is None:
            return None
        for name in dict.fromkeys(name for entries in self._entries.values() for name, _, _ in entries):
            module = get_module(model, name)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        zero_masked(model, masks, self.topo)
        self._entries, self._final = {}, masks
        return masks

    def state_dict(self) -> dict[str, Any]:
        """Schedule position only: the scores and masks are in model.state_dict() (parametrization keys)."""
        return {"schedule": self.schedule.state_dict(), "sparsity": self.sparsity, "removed": self._removed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.sparsity = float(state["sparsity"])
        self._removed = bool(state.get("removed", False))
