"""Retraining-free repair after removal: each sublayer's output projection re-fit by least squares.

After heads and neurons are removed, what a sublayer writes into the residual stream no longer matches the dense
model's. Kwon et al. (NeurIPS 2022, "A Fast Post-Training Pruning Framework for Transformers") re-scale the kept
units by least squares on calibration data; here the whole output projection (attention output, FFN output) of
every layer is re-fit, which contains their solution: for each sublayer in order, with the layers before it already
repaired, W', b' = argmin sum over calibration tokens ||W' x + b' - y||^2 + ridge, where x is the pruned model's
input to the projection and y the dense model's output of it. Closed form (normal equations, float64), so the
pruned model is close to the dense one before any training and recovery starts from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.topology import Topology, describe, get_module, weight_view


@dataclass
class NormalEquations:
    """sum x x^T, sum x y^T, sum |y|^2 over calibration tokens (x with a trailing 1 when the projection has a
    bias): enough to solve the least squares and to evaluate its objective for any weights."""

    xtx: torch.Tensor
    xty: torch.Tensor
    yty: float
    tokens: int

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
    """Accumulate the least-squares statistics of projection `name`: inputs from `model`, targets from `dense`."""
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
            if bias:
                x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
            if stats is None:
                stats = NormalEquations(x.T @ x, x.T @ y, float((y * y).sum()), x.shape[0])
            else:
                stats.xtx += x.T @ x
                stats.xty += x.T @ y
                stats.yty += float((y * y).sum())
                stats.tokens += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
    if stats is None:
        raise ValueError("repair needs calibration batches: none were given")
    return stats


def _output_projections(topo: Topology) -> list[str]:
    """Every sublayer's output projection, in the order the residual stream meets them."""
    names = []
    for b in topo.blocks:
        if b.attention is not None and b.attention.num_heads:
            names.append(b.attention.o)
        if b.ffn is not None and b.ffn.width:
            names.append(b.ffn.output)
    return names


@torch.no_grad()
def refit_outputs(
    model: nn.Module, dense: nn.Module, batches: Callable[[], Iterable[dict]], ridge: float = 1e-4
) -> dict[str, dict[str, float]]:
    """Re-fit every output projection of the pruned `model` to the `dense` model's outputs, layer by layer (each
    fit sees the layers before it repaired). `batches()` gives the calibration batches anew for every sublayer.
    Returns, per projection, the mean squared error per token before and after (the fit never makes it worse:
    an unimprovable fit keeps the old weights)."""
    was = model.training, dense.training
    model.eval()
    dense.eval()
    report: dict[str, dict[str, float]] = {}
    try:
        for name in _output_projections(describe(model)):
            module = get_module(model, name)
            bias = getattr(module, "bias", None) is not None
            eq = normal_equations(model, dense, name, batches(), bias)
            old = _stacked(module)
            new = eq.solve(ridge)
            before, after = eq.objective(old), eq.objective(new)
            if after < before:
                d_in = weight_view(module).shape[1]
                weight_view(module).copy_(new[:d_in].T.to(module.weight.dtype))
                if bias:
                    module.bias.copy_(new[d_in].to(module.bias.dtype))
            report[name] = {"mse_before": before, "mse_after": min(before, after)}
    finally:
        model.train(was[0])
        dense.train(was[1])
    return report
