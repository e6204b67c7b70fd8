"""Retraining-free repair after removal: each sublayer's output projection re-fit by least squares.

After heads and neurons are removed, what a sublayer writes into the residual stream no longer matches the dense
model's. Kwon et al. (NeurIPS 2022, "A Fast Post-Training Pruning Framework for Transformers") re-scale the kept
units by least squares on calibration data; here the whole output projection (attention output, FFN output) of
every layer is re-fit, which contains their solution: for each sublayer in order, with the layers before it already
repaired, W', b' = argmin sum over calibration tokens ||W' x + b' - y||^2 + ridge, where x is the pruned model's
input to the projection and y the dense model's output of it. Closed form (normal equations, float64), so the
pruned model is close to the dense one before any training and recovery starts from there.

Both models are run block by block on their own captured hidden states (importance/layerwise.py), so the whole
repair costs a few forwards of each model, not two per projection: a 30-layer decoder has 60 projections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.importance.layerwise import BlockInput, first_block_inputs, run_block, with_hidden
from prunekit.topology import BlockSpec, Topology, describe, get_module, weight_view


@dataclass
class NormalEquations:
    """sum x x^T, sum x y^T, sum |y|^2 over calibration tokens (x with a trailing 1 when the projection has a
    bias): enough to solve the least squares and to evaluate its objective for any weights."""

    xtx: torch.Tensor
    xty: torch.Tensor
    yty: float
    tokens: int

    @classmethod
    def empty(cls, features: int, outputs: int) -> NormalEquations:
        xtx = torch.zeros(features, features, dtype=torch.float64)
        return cls(xtx, torch.zeros(features, outputs, dtype=torch.float64), 0.0, 0)

    def add(self, x: torch.Tensor, y: torch.Tensor, bias: bool) -> None:
        """Count the tokens x (inputs) -> y (targets), both (tokens, features) in float64 on the CPU."""
        if bias:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.yty += float((y * y).sum())
        self.tokens += x.shape[0]

    def objective(self, w: torch.Tensor) -> float:
        """Mean squared error per token of weights `w` ((in [+1], out), the bias as last row)."""
        return float((torch.sum(w * (self.xtx @ w)) - 2 * torch.sum(w * self.xty) + self.yty) / max(self.tokens, 1))

    def solve(self, ridge: float) -> torch.Tensor:
        scale = float(self.xtx.diagonal().mean()) or 1.0
        eye = torch.eye(self.xtx.shape[0], dtype=self.xtx.dtype)
        return torch.linalg.solve(self.xtx + ridge * scale * eye, self.xty)


def _stacked(module: nn.Module) -> torch.Tensor:
    """The projection's parameters as ((in [+1]), out): the weight transposed, the bias as the last row."""
    w = weight_view(module).detach().double().T
    bias = getattr(module, "bias", None)
    return torch.cat([w, bias.detach().double()[None]]) if bias is not None else w


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(tokens, features): the rows of real (not padding) tokens."""
    flat = x.reshape(-1, x.shape[-1]).double()
    return flat[mask.reshape(-1).bool()] if mask is not None and mask.numel() == flat.shape[0] else flat


@torch.no_grad()
def normal_equations(
    model: nn.Module, dense: nn.Module, name: str, batches: Iterable[dict], bias: bool
) -> NormalEquations:
    """The least-squares statistics of projection `name` from whole-model forwards: inputs from `model`, targets
    from `dense` (the definition the block-by-block repair computes faster; tests compare the two)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        get_module(model, name).register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0])),
        get_module(dense, name).register_forward_hook(lambda _m, _a, out: captured.__setitem__("y", out)),
    ]
    device = next(model.parameters()).device
    stats: NormalEquations | None = None
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
            model(**inputs)
            dense(**inputs)
            mask = inputs.get("attention_mask")
            x, y = _tokens(captured["x"], mask).cpu(), _tokens(captured["y"], mask).cpu()
            stats = stats or NormalEquations.empty(x.shape[1] + bias, y.shape[1])
            stats.add(x, y, bias)
    finally:
        for h in hooks:
            h.remove()
    if stats is None:
        raise ValueError("repair needs calibration batches: none were given")
    return stats


class _Seen(Exception):
    """Raised by the hook that captured what was wanted: the rest of the block is not run."""


def _block_tensor(block: nn.Module, item: BlockInput, module: nn.Module, *, output: bool) -> torch.Tensor:
    """`module`'s input (or its output) when `block` runs on `item`."""
    seen: dict[str, torch.Tensor] = {}

    def keep(value: torch.Tensor) -> None:
        seen["t"] = value
        raise _Seen

    if output:
        handle = module.register_forward_hook(lambda _m, _a, out: keep(out))
    else:
        handle = module.register_forward_pre_hook(lambda _m, args: keep(args[0]))
    try:
        with contextlib.suppress(_Seen):
            run_block(block, item)
    finally:
        handle.remove()
    return seen["t"]


def _block_projections(b: BlockSpec) -> list[str]:
    names = []
    if b.attention is not None and b.attention.num_heads:
        names.append(b.attention.o)
    if b.ffn is not None and b.ffn.width:
        names.append(b.ffn.output)
    return names


def _output_projections(topo: Topology) -> list[str]:
    """Every sublayer's output projection, in the order the residual stream meets them."""
    return [n for b in topo.blocks for n in _block_projections(b)]


@torch.no_grad()
def refit_outputs(
    model: nn.Module, dense: nn.Module, batches: Callable[[], Iterable[dict]], ridge: float = 1e-4
) -> dict[str, dict[str, float]]:
    """Re-fit every output projection of the pruned `model` to the `dense` model's outputs, layer by layer (each
    fit sees the layers before it repaired). `batches()` gives the calibration batches (read twice: once per
    model). Returns, per projection, the mean squared error per token before and after (the fit never makes it
    worse: an unimprovable fit keeps the old weights)."""
    was = model.training, dense.training
    model.eval()
    dense.eval()
    topo = describe(model)
    report: dict[str, dict[str, float]] = {}
    try:
        first = topo.blocks[0].name
        items, _ = first_block_inputs(model, get_module(model, first), batches())
        targets, _ = first_block_inputs(dense, get_module(dense, first), batches())
        if not items:
            raise ValueError("repair needs calibration batches: none were given")
        for spec in topo.blocks:
            block, dense_block = get_module(model, spec.name), get_module(dense, spec.name)
            for name in _block_projections(spec):
                module = get_module(model, name)
                bias = getattr(module, "bias", None) is not None
                eq = NormalEquations.empty(weight_view(module).shape[1] + bias, weight_view(module).shape[0])
                for item, target in zip(items, targets, strict=True):
                    x = _block_tensor(block, item, module, output=False)
                    y = _block_tensor(dense_block, target, get_module(dense, name), output=True)
                    eq.add(_tokens(x, item.tokens).cpu(), _tokens(y, item.tokens).cpu(), bias)
                old = _stacked(module)
                new = eq.solve(ridge)
                before, after = eq.objective(old), eq.objective(new)
                if after < before:
                    d_in = weight_view(module).shape[1]
                    weight_view(module).copy_(new[:d_in].T.to(module.weight.dtype))
                    if bias:
                        module.bias.copy_(new[d_in].to(module.bias.dtype))
                report[name] = {"mse_before": before, "mse_after": min(before, after)}
            items = [with_hidden(item, run_block(block, item)) for item in items]
            targets = [with_hidden(target, run_block(dense_block, target)) for target in targets]
    finally:
        model.train(was[0])
        dense.train(was[1])
    return report
