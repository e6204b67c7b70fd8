"""Unit scores: one per query head and per FFN neuron of every layer, higher = more important.

- `magnitude`: L2 norm of the weights the unit owns (Q rows and O columns of a head plus its share of its KV
  group's K / V rows; a neuron's input rows and output column). Needs no data; blind to what the unit computes
  (on SmolLM2 the lowest-norm neurons of layer 0 carry its largest activations).
- `taylor`: first-order Taylor estimate of the loss change when the unit is removed, |sum over batches of
  d loss / d gate|, with a gate multiplying the unit's output (the input of the output projection). Removing the
  unit sets its gate from 1 to 0, so the change is -d loss / d gate to first order; summing the gradient over
  batches before the absolute value is Torch-Pruning's `|sum(w * grad)|` on the unit's output weights.
- `taylor-elementwise`: sum over the unit's weights of |w * dL/dw|, the gradient summed over batches (Torch-Pruning's
  group Taylor importance): per-weight first-order terms, which cannot cancel as the unit-level sum can.
- `fisher`: sum over batches of (d loss / d gate)^2, the diagonal Fisher information of the unit's mask variable
  (Kwon et al., NeurIPS 2022), with per-batch rather than per-example gradients.
- `activation`: mean |activation| of the unit over the calibration tokens (padding excluded): a neuron's
  activation is its input to the FFN output projection; a head's is the L2 norm of its context vector
  (Minitron's width-pruning criterion). Needs no backward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.importance.gates import GateHooks
from prunekit.topology import Topology, describe, get_module, weight_view
from prunekit.topology.base import is_conv1d

CRITERIA = ("magnitude", "taylor", "taylor-elementwise", "fisher", "sensitivity", "activation")
DATA_CRITERIA = ("taylor", "taylor-elementwise", "fisher", "sensitivity", "activation")  # on calibration batches
# taylor: |sum of d loss / d gate| (first-order Taylor); fisher: sum of its squares; sensitivity: sum of its absolute
# values (Michel et al. 2019, what NAS orders units by); activation: mean |output| of the unit


@dataclass
class UnitScores:
    """layer -> scores; layers without attention (or without heads) / without an FFN are absent."""

    heads: dict[int, torch.Tensor]
    neurons: dict[int, torch.Tensor]
    criterion: str = "magnitude"
    batches: int = 0  # calibration batches the scores were measured on


def unit_scores(
    model: nn.Module,
    criterion: str = "magnitude",
    batches: Iterable[dict] | None = None,
    topo: Topology | None = None,
    heads_keep: dict[int, torch.Tensor] | None = None,
) -> UnitScores:
    """Scores of every head and neuron by `criterion`; the data criteria need `batches` (dicts of model inputs
    with `labels` for the gradient ones, e.g. a task's collated training batches). `heads_keep` (gradient criteria)
    gates heads off first: Michel et al.'s iterative pruning recomputes importance with the heads pruned so far."""
    if criterion not in CRITERIA:
        raise UsageError(f"importance criterion '{criterion}' is not one of {', '.join(CRITERIA)}")
    topo = topo or describe(model)
    if criterion == "magnitude":
        return UnitScores(magnitude_head_scores(model, topo), magnitude_neuron_scores(model, topo), criterion)
    if batches is None:
        raise UsageError(f"importance '{criterion}' is measured on data: give calibration batches")
    if criterion == "activation":
        return _activation_scores(model, topo, batches)
    if criterion == "taylor-elementwise":
        return _elementwise_taylor_scores(model, topo, batches)
    return _gradient_scores(model, topo, batches, criterion, heads_keep)


# ---------------------------------------------------------------- magnitude


def magnitude_head_scores(model: nn.Module, topo: Topology) -> dict[int, torch.Tensor]:
    return {i: v.sqrt() for i, v in _head_sums(model, topo, lambda m: weight_view(m).detach().pow(2)).items()}


def magnitude_neuron_scores(model: nn.Module, topo: Topology) -> dict[int, torch.Tensor]:
    return {i: v.sqrt() for i, v in _neuron_sums(model, topo, lambda m: weight_view(m).detach().pow(2)).items()}


def _head_sums(model: nn.Module, topo: Topology, elem) -> dict[int, torch.Tensor]:
    """Per query head, the sum of `elem(module)` ((out, in) per-weight values) over the weights the head owns: its Q
    rows and O columns, and its share of its KV group's K / V rows."""
    scores = {}
    for b in topo.blocks:
        a = b.attention
        if a is None or a.num_heads == 0:
            continue
        dh = a.head_dim
        q = elem(get_module(model, a.q))
        o = elem(get_module(model, a.o))
        qs = q[: a.num_heads * dh].reshape(a.num_heads, dh, -1).sum((1, 2))
        os_ = o.reshape(o.shape[0], a.num_heads, dh).sum((0, 2))
        if a.fused_qkv:
            kv = q[a.num_heads * dh :].reshape(2, a.num_kv_heads, dh, -1).sum((0, 2, 3))
        else:
            k = elem(get_module(model, a.k)).reshape(a.num_kv_heads, dh, -1)
            v = elem(get_module(model, a.v)).reshape(a.num_kv_heads, dh, -1)
            kv = k.sum((1, 2)) + v.sum((1, 2))
        # a KV head's weights are shared by its group: split them evenly over the group's query heads
        scores[b.index] = qs + os_ + kv.repeat_interleave(a.group_size) / a.group_size
    return scores


def _neuron_sums(model: nn.Module, topo: Topology, elem) -> dict[int, torch.Tensor]:
    """Per FFN neuron, the sum of `elem(module)` over its input rows and its output column."""
    scores = {}
    for b in topo.blocks:
        if b.ffn is None:
            continue
        s = elem(get_module(model, b.ffn.output)).sum(0)
        for name in b.ffn.inputs:
            s = s + elem(get_module(model, name)).sum(1)
        scores[b.index] = s
    return scores


# ---------------------------------------------------------------- measured on data


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _gradient_scores(
    model: nn.Module, topo: Topology, batches: Iterable[dict], criterion: str, heads_keep: dict | None = None
) -> UnitScores:
    """d loss / d gate of every unit, per batch: summed then |.| (taylor), squared then summed (fisher), or |.| then
    summed (sensitivity)."""
    head_gates = {}
    for b in topo.blocks:
        if b.attention is not None and b.attention.num_heads:
            keep = (heads_keep or {}).get(b.index)
            head_gates[b.index] = keep.float() if keep is not None else torch.ones(b.attention.num_heads)
            head_gates[b.index].requires_grad_()
    neuron_gates = {b.index: torch.ones(b.ffn.width, requires_grad=True) for b in topo.blocks if b.ffn is not None}
    gates = [*head_gates.values(), *neuron_gates.values()]
    # sensitivity sums in float32, as NAS always has (its recorded searches stay reproducible to the bit)
    dtype = torch.float32 if criterion == "sensitivity" else torch.float64
    total = [torch.zeros_like(g, dtype=dtype) for g in gates]
    hooks = GateHooks(model, topo)
    was_training, device, count = model.training, _device(model), 0
    model.eval()  # no dropout: the scores of a deterministic function
    try:
        hooks.set_gates(head_gates, neuron_gates)
        for batch in batches:
            out = model(**{k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
            if getattr(out, "loss", None) is None:
                raise UsageError(f"importance '{criterion}' needs a loss: calibration batches must carry labels")
            grads = torch.autograd.grad(out.loss, gates, allow_unused=True)
            for acc, g in zip(total, grads, strict=True):
                if g is not None:
                    g = g.detach().to(dtype)
                    acc += g if criterion == "taylor" else g.pow(2) if criterion == "fisher" else g.abs()
            count += 1
    finally:
        hooks.remove()
        model.train(was_training)
    if count == 0:
        raise UsageError(f"importance '{criterion}' got no calibration batches")
    scores = [t.abs().float() if criterion == "taylor" else t.float() for t in total]
    n = len(head_gates)
    return UnitScores(dict(zip(head_gates, scores[:n], strict=True)), dict(zip(neuron_gates, scores[n:], strict=True)),
                      criterion, count)  # fmt: skip


def _elementwise_taylor_scores(model: nn.Module, topo: Topology, batches: Iterable[dict]) -> UnitScores:
    """Sum over the unit's weights of |w * g|, g the loss gradient summed over the batches (Torch-Pruning's
    `GroupTaylorImportance`, biases aside): first-order terms that cannot cancel, so a unit whose weights matter in
    opposite directions is not taken for idle. The model's own gradients are left as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    was_training, device, count = model.training, _device(model), 0
    model.eval()
    try:
        for p in params:
            p.grad = None
        for batch in batches:
            out = model(**{k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
            if getattr(out, "loss", None) is None:
                raise UsageError("importance 'taylor-elementwise' needs a loss: calibration batches must carry labels")
            out.loss.backward()
            count += 1
        if count == 0:
            raise UsageError("importance 'taylor-elementwise' got no calibration batches")

        def elem(module: nn.Module) -> torch.Tensor:
            w, g = weight_view(module).detach(), module.weight.grad
            g = torch.zeros_like(w) if g is None else (g.T if is_conv1d(module) else g)
            return (w.double() * g.double()).abs()

        heads = {i: v.float() for i, v in _head_sums(model, topo, elem).items()}
        neurons = {i: v.float() for i, v in _neuron_sums(model, topo, elem).items()}
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
        model.train(was_training)
    return UnitScores(heads, neurons, "taylor-elementwise", count)


def _activation_scores(model: nn.Module, topo: Topology, batches: Iterable[dict]) -> UnitScores:
    """Mean |activation| per unit over non-padding tokens, read at the input of the output projections."""
    heads: dict[int, torch.Tensor] = {}
    neurons: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor | None] = {"mask": None}
    tokens = torch.zeros((), dtype=torch.float64)

    def weights(x: torch.Tensor) -> torch.Tensor:  # (B, T) token weights: 1 for real tokens, 0 for padding
        mask = state["mask"]
        if mask is None or mask.shape != x.shape[:2]:
            return torch.ones(x.shape[:2], dtype=torch.float64, device=x.device)
        return mask.to(device=x.device, dtype=torch.float64)

    def head_hook(layer: int, num_heads: int, head_dim: int):
        def hook(module, args):
            x = args[0].detach()
            per_head = x.reshape(*x.shape[:-1], num_heads, head_dim).double().norm(dim=-1)  # (B, T, H)
            s = (per_head * weights(x).unsqueeze(-1)).sum((0, 1))
            heads[layer] = heads.get(layer, 0) + s

        return hook

    def neuron_hook(layer: int):
        def hook(module, args):
            x = args[0].detach()
            s = (x.double().abs() * weights(x).unsqueeze(-1)).sum((0, 1))
            neurons[layer] = neurons.get(layer, 0) + s

        return hook

    handles = []
    for b in topo.blocks:
        if b.attention is not None and b.attention.num_heads:
            hook = head_hook(b.index, b.attention.num_heads, b.attention.head_dim)
            handles.append(get_module(model, b.attention.o).register_forward_pre_hook(hook))
        if b.ffn is not None:
            handles.append(get_module(model, b.ffn.output).register_forward_pre_hook(neuron_hook(b.index)))
    was_training, device, count = model.training, _device(model), 0
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
                state["mask"] = inputs.get("attention_mask")
                ids = inputs.get("input_ids")
                n = state["mask"].sum() if state["mask"] is not None else (ids.numel() if ids is not None else 0)
                tokens += float(n)
                model(**inputs)
                count += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0 or float(tokens) == 0:
        raise UsageError("importance 'activation' got no calibration tokens")
    per_token = lambda d: {i: (s / tokens).float() for i, s in d.items()}  # noqa: E731
    return UnitScores(per_token(heads), per_token(neurons), "activation", count)
