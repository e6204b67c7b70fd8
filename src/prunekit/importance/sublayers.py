"""Scores of the coarser structural groups: whole sublayers (a block's attention or its FFN) and the output rows a
sublayer writes into the residual stream (MLPruning's rows), higher = more important.

Both are read at the output of the sublayer's output projection (Wo, W2), where a gate multiplies it: a row gate
per hidden dimension, the sublayer's gate being all of them at once (so its gradient is the sum of its rows').

- `taylor`: |sum over batches of d loss / d gate|, the first-order loss change of zeroing the group's output;
  `fisher`: sum of its squares per batch; `sensitivity`: sum of its absolute values per batch.
- `taylor-elementwise`: sum of |w * dL/dw| over the group's weights (a row: its row of the output projection and
  bias; a sublayer: every weight of its linears), gradients summed over the batches.
- `activation`: mean over real tokens of |output| (a row) or of the output's L2 norm (a sublayer).
- `magnitude`: L2 norm of the row of the output projection (and its bias), or of all the sublayer's weights.

Zeroing a sublayer's output is removal for the pre-norm families (the block adds nothing to the residual); a
post-norm block (BERT) still normalises what is left, which compaction's skip does not, so there the score ranks
sublayers by what their output carries rather than predicting the removed model's loss exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.importance.scores import CRITERIA, _device
from prunekit.topology import Topology, describe, get_module, weight_view
from prunekit.topology.base import is_conv1d


@dataclass
class SublayerScores:
    """Per layer and kind (`attention`, `ffn`): one score for the whole sublayer and one per output row."""

    sublayers: dict[tuple[int, str], float] = field(default_factory=dict)
    rows: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    criterion: str = "magnitude"
    batches: int = 0


def _outputs(topo: Topology) -> dict[tuple[int, str], tuple[str, list[str]]]:
    """(layer, kind) -> (output projection, every linear of the sublayer)."""
    out = {}
    for b in topo.blocks:
        if b.attention is not None:
            out[(b.index, "attention")] = (b.attention.o, b.attention.linears())
        if b.ffn is not None:
            out[(b.index, "ffn")] = (b.ffn.output, b.ffn.linears())
    return out


def sublayer_scores(
    model: nn.Module, criterion: str = "magnitude", batches: Iterable[dict] | None = None, topo: Topology | None = None
) -> SublayerScores:
    """Scores of every attention / FFN sublayer and of each one's output rows by `criterion` (`unit_scores`'
    criteria; the data ones need `batches`, with labels for the gradient ones)."""
    if criterion not in CRITERIA:
        raise UsageError(f"importance criterion '{criterion}' is not one of {', '.join(CRITERIA)}")
    topo = topo or describe(model)
    groups = _outputs(topo)
    scattered = [o for o, _ in groups.values() if getattr(get_module(model, o), "out_index", None) is not None]
    if scattered:
        raise UsageError(f"{scattered[0]} has output rows removed already: score sublayers and rows before that")
    if criterion == "magnitude":
        return _magnitude(model, groups)
    if batches is None:
        raise UsageError(f"importance '{criterion}' is measured on data: give calibration batches")
    if criterion == "activation":
        return _activation(model, groups, batches)
    if criterion == "taylor-elementwise":
        return _elementwise(model, groups, batches)
    return _gradient(model, groups, batches, criterion)


def _row_norms(module: nn.Module, elem) -> torch.Tensor:
    """Per output row of `module`, the sum of `elem(weight)` over the row plus `elem(bias)`."""
    w = weight_view(module).detach()
    s = elem(w, "weight").sum(1)
    bias = getattr(module, "bias", None)
    return s + elem(bias.detach(), "bias") if bias is not None else s


def _magnitude(model: nn.Module, groups) -> SublayerScores:
    out = SublayerScores(criterion="magnitude")
    for key, (o, names) in groups.items():
        square = lambda t, _: t.double().pow(2)  # noqa: E731
        out.rows[key] = _row_norms(get_module(model, o), square).sqrt().float()
        total = sum(float(_row_norms(get_module(model, n), square).sum()) for n in names)
        out.sublayers[key] = total**0.5
    return out


class _OutputGates:
    """Forward hooks multiplying each output projection's output by a (hidden,) gate."""

    def __init__(self, model: nn.Module, groups, requires_grad: bool) -> None:
        self.gates = {}
        self.handles = []
        for key, (o, _) in groups.items():
            module = get_module(model, o)
            width = weight_view(module).shape[0]
            gate = torch.ones(width, dtype=torch.float32, requires_grad=requires_grad)
            self.gates[key] = gate
            self.handles.append(module.register_forward_hook(self._hook(gate)))

    @staticmethod
    def _hook(gate: torch.Tensor):
        def hook(module, args, output):
            return output * gate.to(device=output.device, dtype=output.dtype)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _forward_inputs(batch: dict, device: torch.device, labels: bool = True) -> dict:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and (labels or k != "labels")}


def _batch_losses(model: nn.Module, batches: Iterable[dict], criterion: str) -> Iterator[torch.Tensor]:
    """The loss of every calibration batch, the model in eval mode meanwhile (no dropout: the gradients of a
    deterministic function); one error for a batch without labels, or for no batch at all."""
    was_training, device, count = model.training, _device(model), 0
    model.eval()
    try:
        for batch in batches:
            out = model(**_forward_inputs(batch, device))
            if getattr(out, "loss", None) is None:
                raise UsageError(f"importance '{criterion}' needs a loss: calibration batches must carry labels")
            count += 1
            yield out.loss
    finally:
        model.train(was_training)
    if count == 0:
        raise UsageError(f"importance '{criterion}' got no calibration batches")


def _gradient(model: nn.Module, groups, batches: Iterable[dict], criterion: str) -> SublayerScores:
    hooks = _OutputGates(model, groups, requires_grad=True)
    keys = list(hooks.gates)
    rows = {k: torch.zeros(hooks.gates[k].numel(), dtype=torch.float64) for k in keys}
    whole = dict.fromkeys(keys, 0.0)
    count = 0
    try:
        for loss in _batch_losses(model, batches, criterion):
            grads = torch.autograd.grad(loss, [hooks.gates[k] for k in keys], allow_unused=True)
            for k, g in zip(keys, grads, strict=True):
                g = torch.zeros_like(rows[k]) if g is None else g.detach().double().cpu()
                s = float(g.sum())
                if criterion == "taylor":
                    rows[k] += g
                    whole[k] += s
                elif criterion == "fisher":
                    rows[k] += g.pow(2)
                    whole[k] += s * s
                else:  # sensitivity
                    rows[k] += g.abs()
                    whole[k] += abs(s)
            count += 1
    finally:
        hooks.remove()
    fix = (lambda t: t.abs()) if criterion == "taylor" else (lambda t: t)
    return SublayerScores(
        {k: float(abs(v)) for k, v in whole.items()}, {k: fix(v).float() for k, v in rows.items()}, criterion, count
    )


def _elementwise(model: nn.Module, groups, batches: Iterable[dict]) -> SublayerScores:
    names = sorted({n for _, linears in groups.values() for n in linears})
    params = {}
    for n in names:
        m = get_module(model, n)
        params[(n, "weight")] = m.weight
        if getattr(m, "bias", None) is not None:
            params[(n, "bias")] = m.bias
    keys = list(params)
    sums = {k: torch.zeros_like(params[k], dtype=torch.float64) for k in keys}
    count = 0
    for loss in _batch_losses(model, batches, "taylor-elementwise"):
        grads = torch.autograd.grad(loss, [params[k] for k in keys], allow_unused=True)
        for k, g in zip(keys, grads, strict=True):
            if g is not None:
                sums[k] += g.detach().double()
        count += 1

    def terms(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """|w * g| of the module in (out, in) orientation, and of its bias."""
        m = get_module(model, name)
        g = sums[(name, "weight")]
        w = (params[(name, "weight")].detach().double() * g).abs()
        w = w.T if is_conv1d(m) else w
        if (name, "bias") not in params:
            return w, None
        return w, (params[(name, "bias")].detach().double() * sums[(name, "bias")]).abs()

    out = SublayerScores(criterion="taylor-elementwise", batches=count)
    for key, (o, linears) in groups.items():
        w, b = terms(o)
        out.rows[key] = (w.sum(1) + (b if b is not None else 0)).float()
        total = 0.0
        for n in linears:
            w, b = terms(n)
            total += float(w.sum()) + (float(b.sum()) if b is not None else 0.0)
        out.sublayers[key] = total
    return out


def _activation(model: nn.Module, groups, batches: Iterable[dict]) -> SublayerScores:
    rows: dict[tuple[int, str], torch.Tensor] = {}
    norms: dict[tuple[int, str], float] = {}
    state: dict[str, torch.Tensor | None] = {"mask": None}
    handles = []

    def hook_for(key):
        def hook(module, args, output):
            x = output.detach().double()
            mask = state["mask"]
            w = (
                mask.to(device=x.device, dtype=torch.float64)
                if mask is not None and mask.shape == x.shape[:2]
                else torch.ones(x.shape[:2], dtype=torch.float64, device=x.device)
            )
            rows[key] = rows.get(key, 0) + (x.abs() * w.unsqueeze(-1)).sum((0, 1)).cpu()
            norms[key] = norms.get(key, 0.0) + float((x.norm(dim=-1) * w).sum())

        return hook

    for key, (o, _) in groups.items():
        handles.append(get_module(model, o).register_forward_hook(hook_for(key)))
    was_training, device, count, tokens = model.training, _device(model), 0, 0.0
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = _forward_inputs(batch, device, labels=False)
                state["mask"] = inputs.get("attention_mask")
                ids = inputs.get("input_ids")
                mask = state["mask"]
                tokens += float(mask.sum()) if mask is not None else float(ids.numel() if ids is not None else 0)
                model(**inputs)
                count += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0 or tokens == 0:
        raise UsageError("importance 'activation' got no calibration tokens")
    per_token = {k: (v / tokens).float() for k, v in rows.items()}
    return SublayerScores({k: v / tokens for k, v in norms.items()}, per_token, "activation", count)
