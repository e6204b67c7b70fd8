"""MLPruning (Yao et al. 2021, arXiv 2105.14636; METHODS.md section 3): multilevel structured pruning with a
learnable Top-k threshold, an adaptive regulariser toward a target density, and distillation, in two steps.

Step 1 prunes attention heads, rows of Wo (hidden dimensions the attention writes), FFN neurons (rows of W1,
columns of W2) and rows of W2. A head unit is a KV group: one head without grouped-query attention; with
GQA, a KV head and its query heads, so K and V shrink with the kept units and the result always compacts.
Its score is shared by the unit's Q, K, V rows and Wo columns. Step 1 ends by rounding the kept units up to the
block size (also when it runs alone, so a later step 2 can pack every matrix); step 2, on the compacted model,
prunes B x B blocks of every remaining matrix.

Each unit type of each layer (step 1) or each matrix (step 2) has scores S (init 0) and one threshold t
(init 10): the forward keeps the top ceil(sigmoid(t) * n) scores (`TopKBinarizer`), the backward is
straight-through for S and the chain rule through the sigmoid for t (the public code drops sigmoid'(t)).
The regulariser lambda * R drives the expected kept fraction, computed from sigmoid(t) and the shapes the
topology reports (any model size, GQA included), down to the target.

Masks are `torch.nn.utils.parametrize` parametrizations, as in movement pruning: the scores and thresholds
live inside the model (`<block>.mlpruning`), so DDP sees them and `model.state_dict()` checkpoints them; a
head's scores gate four weights, so the gates hold a reference to the shared unit rather than a copy.

Both steps in one recipe (`step: both`): `next_stage(model)` ends step 1 (round up, compact in place) and
returns the teacher of step 2 (the compacted step-1 model); the caller trains again with the same method,
now in block mode (the pipeline's loop over `next_stage`), and `finalize` ends step 2, packing block-sparse matrices
where a timing says they beat dense.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.compact.remove import compact
from prunekit.importance.warm_start import data_unit_scores, rank_init
from prunekit.kernels import pack_block_sparse
from prunekit.masks import MaskSet, block_parameter_count, zero_masked
from prunekit.methods.base import Method, NextStage, register
from prunekit.methods.mlpruning.config import UNIT_TYPES, MLPruningConfig
from prunekit.topology import Topology, describe, get_module, linear_shape
from prunekit.topology.base import is_conv1d

UNITS_ATTR = "mlpruning"  # the ModuleDict on each block that holds its units' scores and thresholds


# ---------------------------------------------------------------- the binariser


def kept_units(ratio: float, n: int) -> int:
    """ceil(ratio * n), at least 1 and at most n: how many units a threshold keeps."""
    return min(n, max(1, math.ceil(ratio * n)))


def top_units(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k highest scores; ties go to the lower index (stable), so masks are reproducible."""
    flat = scores.detach().flatten()
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    return keep.view_as(scores)


class TopKBinarizer(torch.autograd.Function):
    """mask = top ceil(sigmoid(t) * n) of S. Backward: dL/dS = dL/dmask (straight-through) and
    dL/dt = sum(dL/dmask * mask) * sigmoid'(t), as if the kept units' gates were sigmoid(t) / sigmoid(t0)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(threshold.detach())
        mask = top_units(scores, kept_units(float(r), scores.numel())).to(scores.dtype)
        ctx.save_for_backward(mask, r)
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask, r = ctx.saved_tensors
        return grad, ((grad * mask).sum() * r * (1 - r)).reshape(r.shape)


class UnitScores(nn.Module):
    """Scores of n units and their threshold: one unit type of one layer, or the blocks of one matrix."""

    def __init__(self, n: int, score_init: float = 0.0, threshold_init: float = 10.0, device=None) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.full((n,), float(score_init), device=device))
        self.threshold = nn.Parameter(torch.tensor(float(threshold_init), device=device))

    @property
    def n(self) -> int:
        return self.scores.numel()

    def ratio(self) -> torch.Tensor:
        return torch.sigmoid(self.threshold)

    def mask(self) -> torch.Tensor:
        """The float 0/1 mask, differentiable in scores and threshold."""
        return TopKBinarizer.apply(self.scores, self.threshold)

    def kept(self) -> int:
        return kept_units(float(self.ratio().detach()), self.n)

    def keep(self, k: int | None = None) -> torch.Tensor:
        """Bool mask of the top k (default: the threshold's count) units."""
        return top_units(self.scores, self.kept() if k is None else k)


class UnitGate(nn.Module):
    """Parametrization W -> W * m with m a unit mask expanded to W: over output features (`out`, also used
    for the bias), input features (`in`), or B x B tiles (`block`, cropped at ragged edges). Weights stored
    (in, out) (GPT-2's Conv1D) set `transpose`."""

    def __init__(
        self,
        unit: UnitScores,
        kind: str,
        *,
        index: torch.Tensor | None = None,
        grid: tuple[int, int] = (0, 0),
        block: int = 1,
        shape: tuple[int, int] = (0, 0),
        transpose: bool = False,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "unit", unit)  # a reference, not a child: the unit is registered on its block
        self.kind, self.grid, self.block, self.shape, self.transpose = kind, grid, block, shape, transpose
        if index is not None:
            self.register_buffer("index", index, persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m = self.unit.mask().to(w.dtype)
        if self.kind == "block":
            rows, cols = self.grid
            g = m.view(rows, cols).repeat_interleave(self.block, 0).repeat_interleave(self.block, 1)
            g = g[: self.shape[0], : self.shape[1]]
        else:
            g = m[self.index]
            if w.dim() == 2:
                g = g[:, None] if self.kind == "out" else g[None, :]
        if self.transpose and w.dim() == 2:
            g = g.T
        return w * g


# ---------------------------------------------------------------- shapes and expected parameters


@dataclass
class Side:
    """One side (output or input features) of a linear in step 1: which unit type gates it, if any."""

    unit: str | None
    per_unit: int  # features per unit
    full: int  # features now
    index: torch.Tensor | None = None  # feature -> unit


@dataclass
class LinearPlan:
    name: str
    layer: int
    out: Side
    inp: Side
    bias: bool
    transpose: bool

    def params(self, count: Callable[[int, str], Any]) -> Any:
        """Weights and bias kept, given each unit type's kept count (a float, an int or a tensor)."""
        o = self.out.full if self.out.unit is None else count(self.layer, self.out.unit) * self.out.per_unit
        i = self.inp.full if self.inp.unit is None else count(self.layer, self.inp.unit) * self.inp.per_unit
        return o * i + (o if self.bias else 0)


def _arange_div(n: int, size: int) -> torch.Tensor:
    return torch.arange(n) // size


def step1_plans(model: nn.Module, topo: Topology, units: list[str]) -> tuple[list[LinearPlan], dict]:
    """The linears of every block with the unit types gating their sides, and each (layer, unit type)'s
    unit count and metadata (`n`, `expand` query heads per unit, `rows` output index, `step` rounding)."""
    plans: list[LinearPlan] = []
    meta: dict[tuple[int, str], dict[str, Any]] = {}

    def add(name: str, layer: int, out: Side, inp: Side) -> None:
        for side in (out, inp):
            if side.unit is not None and side.unit not in units:
                side.unit, side.index = None, None
        module = get_module(model, name)
        plans.append(LinearPlan(name, layer, out, inp, getattr(module, "bias", None) is not None, is_conv1d(module)))

    for b in topo.blocks:
        a, f, i = b.attention, b.ffn, b.index
        if a is not None and a.num_heads:
            g, dh = a.group_size, a.head_dim
            q_idx = _arange_div(a.num_heads * dh, g * dh)
            kv_idx = _arange_div(a.num_kv_heads * dh, dh)
            d_in = linear_shape(get_module(model, a.q))[1]
            if a.fused_qkv:
                fused = torch.cat([q_idx, kv_idx, kv_idx])
                add(a.q, i, Side("heads", (g + 2) * dh, fused.numel(), fused), Side(None, 1, d_in))
            else:
                add(a.q, i, Side("heads", g * dh, q_idx.numel(), q_idx), Side(None, 1, d_in))
                add(a.k, i, Side("heads", dh, kv_idx.numel(), kv_idx), Side(None, 1, d_in))
                add(a.v, i, Side("heads", dh, kv_idx.numel(), kv_idx), Side(None, 1, d_in))
            o = get_module(model, a.o)
            rows = linear_shape(o)[0]
            add(a.o, i, Side("attn_rows", 1, rows, torch.arange(rows)), Side("heads", g * dh, q_idx.numel(), q_idx))
            meta[(i, "heads")] = {"n": a.num_kv_heads, "expand": g, "rows_per_unit": dh}
            meta[(i, "attn_rows")] = {"n": rows, "rows": getattr(o, "out_index", None), "rows_per_unit": 1}
        elif a is not None:  # every head already removed: the projection is a bias only
            add(a.o, i, Side(None, 1, linear_shape(get_module(model, a.o))[0]), Side(None, 1, 0))
        if f is not None and f.width:
            d_in = linear_shape(get_module(model, f.inputs[0]))[1]
            for name in f.inputs:
                add(name, i, Side("neurons", 1, f.width, torch.arange(f.width)), Side(None, 1, d_in))
            w2 = get_module(model, f.output)
            rows = linear_shape(w2)[0]
            add(f.output, i, Side("ffn_rows", 1, rows, torch.arange(rows)), Side("neurons", 1, f.width,
                torch.arange(f.width)))  # fmt: skip
            meta[(i, "neurons")] = {"n": f.width, "rows_per_unit": 1}
            meta[(i, "ffn_rows")] = {"n": rows, "rows": getattr(w2, "out_index", None), "rows_per_unit": 1}
        elif f is not None:
            add(f.output, i, Side(None, 1, linear_shape(get_module(model, f.output))[0]), Side(None, 1, 0))
    meta = {k: v for k, v in meta.items() if k[1] in units}
    return plans, meta


def adaptive_penalty(
    density: torch.Tensor,
    target: float,
    lambda_final: float = 2e4,
    lambda_min: float = 50.0,
    lambda_small: float = 10.0,
    small: float = 3e-4,
) -> tuple[torch.Tensor, float]:
    """(R, lambda): R = (density - tau)^2 above the target, else 0; lambda = max(lambda_final * R / (1 - tau)^2,
    lambda_min), or lambda_small once R < small. lambda is a plain float: no gradient flows through it."""
    r = (density - target).clamp_min(0.0) ** 2
    value = float(r.detach())
    if value < small or target >= 1.0:
        return r, float(lambda_small)
    return r, max(lambda_final * value / (1.0 - target) ** 2, lambda_min)


# ---------------------------------------------------------------- the method


@register
class MLPruning(Method):
    """Learned Top-k thresholds under an adaptive density regulariser; heads and rows, then blocks."""

    name = "mlpruning"
    config_class = MLPruningConfig

    def selectable(self, step: int, total_steps: int) -> bool:
        return step >= self.config.end * total_steps  # masks final from `end` on

    config: MLPruningConfig
    needs_finetuned = True

    def __init__(self, config: MLPruningConfig | dict | None = None) -> None:
        super().__init__(config)
        self.step = 2 if self.config.step == 2 else 1
        self._units: dict[tuple[int, str], UnitScores] = {}
        self._meta: dict[tuple[int, str], dict[str, Any]] = {}
        self._plans: list[LinearPlan] = []
        self._gated: list[str] = []
        self._dense_step = 1.0  # what the density of this step is a fraction of
        self._rest = 0.0  # step 2: parameters of the blocks that block pruning does not touch (biases)
        self._final: MaskSet | None = None
        self.info: dict[str, Any] = {}  # dense_params (at the start of the run), step1 summary
        self.pack_report: dict[str, Any] | None = None
        self._warm: dict[tuple[int, str], torch.Tensor] = {}  # (layer, unit type) -> data scores (score_from)

    def calibration_examples(self) -> int:
        return self.config.calibration_examples if self.config.score_from != "none" and self.step == 1 else 0

    def calibrate(self, model: nn.Module, batches: Iterable[dict]) -> None:
        self._warm = data_unit_scores(model, self.config.score_from, batches, self.config.units)

    # ------------------------------------------------------------ attach

    def attach(self, model: nn.Module, topo: Topology) -> None:
        super().attach(model, topo)
        self._final = None
        total = block_parameter_count(model, topo)[0]
        self.info.setdefault("dense_params", total)
        if self.step == 1:
            self._attach_step1(model, topo)
        else:
            self._attach_step2(model, topo)
            self._rest = total - self._dense_step

    def _register(self, model: nn.Module, layer: int, key: str, n: int, device) -> UnitScores:
        block = get_module(model, self.topo.blocks[layer].name)
        if not hasattr(block, UNITS_ATTR):
            block.add_module(UNITS_ATTR, nn.ModuleDict())
        unit = UnitScores(n, self.config.score_init, self.config.threshold_init, device=device)
        warm = self._warm.get((layer, key))
        if warm is not None:  # score_from: the data's order (a checkpoint's scores replace these on resume)
            if key == "heads":  # one unit per KV head: the sum of its query heads' scores
                warm = warm.view(n, -1).sum(1)
            with torch.no_grad():
                unit.scores.add_(rank_init(warm, self.config.score_from_scale).to(device))
        getattr(block, UNITS_ATTR)[key] = unit
        self._units[(layer, key)] = unit
        return unit

    def _gate(self, module: nn.Module, tensor: str, gate: UnitGate) -> None:
        parametrize.register_parametrization(module, tensor, gate.to(getattr(module, tensor).device))

    def _attach_step1(self, model: nn.Module, topo: Topology) -> None:
        self._plans, self._meta = step1_plans(model, topo, self.config.units)
        for (layer, key), meta in self._meta.items():
            device = next(get_module(model, topo.blocks[layer].name).parameters()).device
            self._register(model, layer, key, meta["n"], device)
        for plan in self._plans:
            module = get_module(model, plan.name)
            if plan.out.unit is not None:
                unit = self._units[(plan.layer, plan.out.unit)]
                self._gate(module, "weight", UnitGate(unit, "out", index=plan.out.index, transpose=plan.transpose))
                if plan.bias:
                    self._gate(module, "bias", UnitGate(unit, "out", index=plan.out.index))
            if plan.inp.unit is not None:
                unit = self._units[(plan.layer, plan.inp.unit)]
                self._gate(module, "weight", UnitGate(unit, "in", index=plan.inp.index, transpose=plan.transpose))
            if plan.out.unit is not None or plan.inp.unit is not None:
                self._gated.append(plan.name)
        self._dense_step = float(sum(p.params(lambda layer, unit: self._meta[(layer, unit)]["n"]) for p in self._plans))

    def _attach_step2(self, model: nn.Module, topo: Topology) -> None:
        bsz = self.config.block
        self._plans, self._meta = [], {}
        for b in topo.blocks:
            for name in b.linears():
                module = get_module(model, name)
                out_f, in_f = linear_shape(module)
                if out_f * in_f == 0:
                    continue
                grid = (math.ceil(out_f / bsz), math.ceil(in_f / bsz))
                key = name[len(b.name) + 1 :].replace(".", "__")
                unit = self._register(model, b.index, key, grid[0] * grid[1], module.weight.device)
                gate = UnitGate(unit, "block", grid=grid, block=bsz, shape=(out_f, in_f), transpose=is_conv1d(module))
                self._gate(module, "weight", gate)
                self._meta[(b.index, key)] = {"n": grid[0] * grid[1], "name": name, "weights": out_f * in_f}
                self._gated.append(name)
        self._dense_step = float(sum(m["weights"] for m in self._meta.values()))

    def threshold_lr(self) -> float:
        """The thresholds' learning rate: the configured one, or `auto` for this stage's length (score_lr when
        the length is unknown, as with an optimizer built by hand)."""
        c = self.config
        if c.threshold_lr != "auto":
            return float(c.threshold_lr)
        if not self.planned_steps:
            return c.score_lr
        target = min(max(self._target(), 1e-3), 1 - 1e-3)
        travel = max(c.threshold_init - math.log(target / (1 - target)), 1.0)
        return travel / (c.reach * self.planned_steps)

    def parameter_groups(self) -> list[dict[str, Any]]:
        if not self._units:
            return []
        lr = self.threshold_lr()
        self.info.setdefault("threshold_lr", {})[str(self.step)] = lr
        scores = [unit.scores for unit in self._units.values()]
        thresholds = [unit.threshold for unit in self._units.values()]
        return [
            {"params": scores, "lr": self.config.score_lr, "weight_decay": 0.0, "name": "mlpruning_scores"},
            {"params": thresholds, "lr": lr, "betas": tuple(self.config.threshold_betas), "weight_decay": 0.0,
             "name": "mlpruning_thresholds"},
        ]  # fmt: skip

    # ------------------------------------------------------------ density and regulariser

    def _count(self, kind: str) -> Callable[[int, str], Any]:
        """Kept units per (layer, unit type): `ratio` sigmoid(t) * n (differentiable, at least 1), `kept` the
        binariser's ceil counts, `dense` all."""

        def count(layer: int, key: str):
            unit = self._units[(layer, key)]
            if kind == "ratio":
                return (unit.ratio() * unit.n).clamp_min(1.0)
            return unit.kept() if kind == "kept" else unit.n

        return count

    def kept_params(self, kind: str = "ratio") -> Any:
        """Parameters this step keeps: step 1, block weights and biases; step 2, matrix weights."""
        count = self._count(kind)
        if self.step == 1:
            return sum(p.params(count) for p in self._plans)
        return sum(count(layer, key) / m["n"] * m["weights"] for (layer, key), m in self._meta.items())

    def density(self, kind: str = "ratio") -> Any:
        """The step's density: kept / dense parameters, a tensor for `ratio` (the regulariser's), else a float."""
        return self.kept_params(kind) / self._dense_step

    def overall_density(self) -> float:
        """Kept parameters of the blocks' linears over those of the model this run started from."""
        kept = float(self.kept_params("kept")) + (self._rest if self.step == 2 else 0.0)
        return kept / max(float(self.info["dense_params"]), 1.0)

    def _target(self) -> float:
        return self.config.target if self.step == 1 else self.config.block_target

    def _penalty(self, density: torch.Tensor) -> tuple[torch.Tensor, float]:
        c = self.config
        return adaptive_penalty(density, self._target(), c.lambda_final, c.lambda_min, c.lambda_small, c.small_penalty)

    def loss_terms(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        if not self._units:
            return {}
        r, lam = self._penalty(self.density("ratio"))
        return {"mlpruning_reg": lam * r}

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        if not self._units:
            return {}
        with torch.no_grad():
            density = self.density("ratio")
            r, lam = self._penalty(density)
            kept = float(self.density("kept"))
        return {
            "density": float(density),
            "kept_density": kept,
            "R": float(r),
            "lambda": lam,
            "sparsity": 1.0 - kept,
            "overall_density": self.overall_density(),
            "mlpruning_step": float(self.step),
        }

    # ------------------------------------------------------------ masks

    def _round(self, key: tuple[int, str], k: int) -> int:
        meta, unit = self._meta[key], self._units[key]
        step = self.config.block // math.gcd(self.config.block, meta["rows_per_unit"])
        return min(unit.n, math.ceil(k / step) * step)

    def _step1_masks(self, round_up: bool = False) -> MaskSet:
        masks = MaskSet()
        d = self.topo.hidden_size
        for key, unit in self._units.items():
            layer, kind = key
            k = unit.kept()
            keep = unit.keep(self._round(key, k) if round_up else k).cpu()
            lm = masks.layer(layer)
            if kind == "heads":
                lm.heads = keep.repeat_interleave(self._meta[key]["expand"])
            elif kind == "neurons":
                lm.neurons = keep
            else:
                index = self._meta[key]["rows"]
                full = torch.zeros(d, dtype=torch.bool)
                full[index.cpu()[keep] if index is not None else torch.nonzero(keep).flatten()] = True
                setattr(lm, kind, full)
        return masks

    def _step2_masks(self) -> MaskSet:
        masks = MaskSet()
        bsz = self.config.block
        for key, unit in self._units.items():
            name = self._meta[key]["name"]
            out_f, in_f = linear_shape(get_module(self.model, name))
            grid = (math.ceil(out_f / bsz), math.ceil(in_f / bsz))
            keep = unit.keep().view(grid).repeat_interleave(bsz, 0).repeat_interleave(bsz, 1)[:out_f, :in_f]
            masks.weights[name] = keep.cpu()
            masks.patterns[name] = f"{bsz}x{bsz}"
        return masks

    def masks(self) -> MaskSet | None:
        if self._final is not None:
            return self._final
        if not self._units:
            return None
        with torch.no_grad():
            return self._step1_masks() if self.step == 1 else self._step2_masks()

    def enforce_masks(self, model: nn.Module) -> None:
        """Nothing to write: the parametrized forward masks, and pruned units may come back while scores move."""

    def _remove(self, model: nn.Module, leave: bool) -> None:
        """Drop the parametrizations (leave: W * mask; else the original W) and the units."""
        for name in dict.fromkeys(self._gated):
            module = get_module(model, name)
            for tensor in ("weight", "bias"):
                if parametrize.is_parametrized(module, tensor):
                    parametrize.remove_parametrizations(module, tensor, leave_parametrized=leave)
        for b in self.topo.blocks:
            block = get_module(model, b.name)
            if hasattr(block, UNITS_ATTR):
                delattr(block, UNITS_ATTR)
        self._units, self._gated = {}, []

    # ------------------------------------------------------------ stages

    def _summary1(self, masks: MaskSet) -> dict[str, Any]:
        layers = []
        for layer, lm in sorted(masks.layers.items()):
            entry = {"layer": layer}
            for kind in UNIT_TYPES:
                m = getattr(lm, kind)
                if m is not None:
                    entry[kind] = int(m.sum())
            layers.append(entry)
        return {"density": float(self.density("ratio")), "kept_density": float(self.density("kept")), "layers": layers}

    def _end_step1(self, model: nn.Module) -> MaskSet:
        """Step 1's masks rounded up to the block (`round_to_block`), recorded in `info`; the parametrizations go,
        leaving the original weights, so units added by rounding come back as trained."""
        masks = self._step1_masks(round_up=self.config.round_to_block)
        self.info["step1"] = self._summary1(masks)
        self._remove(model, leave=False)
        return masks

    @torch.no_grad()
    def next_stage(self, model: nn.Module) -> NextStage | None:
        """After step 1 of `step: both`: round kept units up to the block size, compact the model in place and
        switch to block pruning; returns the step-2 teacher (a copy of the compacted model). None when done."""
        if self.config.step != "both" or self.step != 1 or not self._units:
            return None

        masks = self._end_step1(model)
        compact(model, masks, self.topo)
        self.info["step1"]["params"] = block_parameter_count(model)[0]
        self.step = 2
        self.model, self.topo = model, describe(model)
        return NextStage(stage="prune-blocks", teacher=copy.deepcopy(model).eval())

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> MaskSet | None:
        """Plain weights and the masks to compact. Step 1: the original weights, zeroed where pruned (the caller
        compacts). Step 2: weights times their block masks, then block-sparse packing (`pack`)."""
        if self._final is not None:
            return self._final
        if not self._units:
            return None
        if self.step == 1:
            if self.config.step == "both":
                warnings.warn("mlpruning: finalize() before next_stage(): step 2 (blocks) did not run", stacklevel=2)
            masks = self._end_step1(model)  # rounded up: a later `step: 2` run on this model can pack every matrix
        else:
            masks = self._step2_masks()
            self._remove(model, leave=True)
        zero_masked(model, masks, self.topo)
        if self.step == 2 and self.config.pack != "never":
            self.pack_report = pack_block_sparse(
                model,
                names=list(masks.weights),
                block=self.config.block,
                tokens=self.config.pack_tokens,
                min_speedup=self.config.min_speedup,
                always=self.config.pack == "always",
            )
        self._final = masks
        return masks

    # ------------------------------------------------------------ state

    def report(self) -> dict[str, Any] | None:
        """The steps' summaries (kept units, threshold lr) and how the block-sparse matrices were packed."""
        parts = {"info": self.info, "pack_report": self.pack_report}
        return {k: v for k, v in parts.items() if v} or None

    def state_dict(self) -> dict[str, Any]:
        """The step and run bookkeeping; scores and thresholds are in model.state_dict()."""
        return {"step": self.step, "info": copy.deepcopy(self.info)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["step"]) != self.step:
            raise RuntimeError(f"mlpruning: the checkpoint is from step {state['step']}, the method is at {self.step}")
        self.info = copy.deepcopy(state["info"])
