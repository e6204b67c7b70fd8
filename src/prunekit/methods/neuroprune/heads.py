"""Redundant attention heads: similarity, the greedy dominating set, and folding (NeuroPrune, METHODS.md 1d).

Reusable by any method: `prune_redundant_heads(model, topo, theta)` finds, in every layer, the heads whose
Q/K/V weights lie within `theta` (max absolute difference) of a surviving head, adds their output-projection
columns to that survivor's and zeroes everything they own. The function is the same as removing them
(exactly so when the two heads are identical); the caller keeps the returned head masks, and
`prunekit.compact.remove` removes the heads physically at the end (no module is replaced mid-training, so the
optimizer's state stays valid and checkpoints resume exactly).

Units are KV groups. For multi-head attention a group is one head, so this is the paper's per-head algorithm
unchanged. For grouped-query attention (Llama / SmolLM2) we merge and remove whole KV groups: a group's
weights are its query heads' Q rows (in order) plus its K and V rows, and group g folds into group r head by
head (query head t of g into query head t of r). Merging single query heads instead is exact only inside one
group (heads of different groups see different K/V), and the dominating set would leave uneven heads per group,
which grouped-query attention cannot compact (prunekit.compact.remove's GQA rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.masks import MaskSet, zero_masked
from prunekit.topology import Topology, get_module, weight_view
from prunekit.topology.base import AttentionSpec


def dominators(similar: torch.Tensor | Sequence[Sequence[int]]) -> list[int]:
    """The paper's FIND_DOMINATING: for each head i, the head js it maps to (D[i, js] = 1).

    With N(x) the set of heads similar to x (row x of S), the pseudo-code's test on s = S[js] - S[j],
    `(1 not in s and -1 in s) or (all(s == 0) and js < j)`, reads: N(js) is a strict subset of N(j), or the
    two are equal and j comes later. So a scan only ever moves up the strict order (N, index), which makes
    every js a fixed point (D[js, js] = 1): a head is dominated by a kept head, never by a removed one, and
    among heads with identical neighbourhoods the later one is kept.
    """
    rows = [[bool(x) for x in row] for row in (similar.tolist() if isinstance(similar, torch.Tensor) else similar)]
    h = len(rows)
    if any(len(r) != h for r in rows):
        raise ValueError(f"similarity matrix must be square, got {h} rows of lengths {[len(r) for r in rows]}")
    out = []
    for i in range(h):
        js = i
        for j in range(h):
            a, b = rows[js], rows[j]
            subset = all(y or not x for x, y in zip(a, b, strict=True))  # N(js) <= N(j)
            if (subset and a != b) or (a == b and js < j):
                js = j
        out.append(js)
    return out


def dominating_matrix(similar: torch.Tensor) -> torch.Tensor:
    """D as the pseudo-code builds it: D[i, dominators(S)[i]] = 1."""
    dom = dominators(similar)
    d = torch.zeros(len(dom), len(dom), dtype=torch.long)
    d[torch.arange(len(dom)), torch.tensor(dom, dtype=torch.long)] = 1
    return d


def similarity(params: torch.Tensor, theta: float) -> torch.Tensor:
    """S[i, j] = max |P_i - P_j| <= theta for unit weights P of shape (units, rows, d); unit diagonal.
    One row of pairs at a time, so memory stays at one (units, rows, d) difference."""
    n = params.shape[0]
    s = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        s[i] = ((params - params[i]).abs().flatten(1).amax(1) <= theta).cpu()
    s.fill_diagonal_(True)
    return s


def unit_params(model: nn.Module, att: AttentionSpec) -> torch.Tensor:
    """(KV groups, (group size + 2) * head_dim, d): each group's query rows in order, then its K and V rows."""
    h, kv, dh = att.num_heads, att.num_kv_heads, att.head_dim
    if att.fused_qkv:
        w = weight_view(get_module(model, att.q)).detach()
        q, k, v = w[: h * dh], w[h * dh : (h + kv) * dh], w[(h + kv) * dh :]
    else:
        q, k, v = (weight_view(get_module(model, n)).detach() for n in (att.q, att.k, att.v))
    d = q.shape[1]
    return torch.cat([q.reshape(kv, -1, d), k.reshape(kv, dh, d), v.reshape(kv, dh, d)], dim=1)


def find_redundant(
    model: nn.Module,
    att: AttentionSpec,
    theta: float,
    theta_mode: str = "absolute",
    alive: torch.Tensor | None = None,
) -> dict[int, int]:
    """{removed KV group: the kept group it folds into} for one layer, among the `alive` groups only (heads
    removed earlier are all zero and would look alike). Empty when no two groups are similar."""
    units = att.num_kv_heads
    alive = torch.ones(units, dtype=torch.bool) if alive is None else alive.bool().cpu()
    idx = torch.nonzero(alive).flatten().tolist()
    if len(idx) < 2:
        return {}
    params = unit_params(model, att)[idx].float()
    if theta_mode == "relative":  # theta in units of the layer's mean |weight|: one value transfers across models
        theta = theta * float(params.abs().mean())
    elif theta_mode != "absolute":
        raise ValueError(f"theta_mode must be 'absolute' or 'relative', got '{theta_mode}'")
    s = similarity(params, theta)
    if not bool((s & ~torch.eye(len(idx), dtype=torch.bool)).any()):
        return {}
    dom = dominators(s)
    return {idx[i]: idx[j] for i, j in enumerate(dom) if j != i}


def fold_units(model: nn.Module, topo: Topology, layer: int, mapping: dict[int, int], merge: bool = True) -> None:
    """Add each removed group's output-projection columns to its survivor's (query head by query head), then
    zero everything the removed groups own (Q/K/V rows and biases, Wo columns)."""
    if not mapping:
        return
    att = topo.blocks[layer].attention
    g, dh = att.group_size, att.head_dim
    with torch.no_grad():
        if merge:
            wo = weight_view(get_module(model, att.o))
            for src, dst in mapping.items():
                if src in mapping.values() or dst in mapping:
                    raise ValueError(f"group {src} -> {dst}: a survivor is itself removed (not a dominating set)")
                for t in range(g):
                    a, b = (src * g + t) * dh, (dst * g + t) * dh
                    wo[:, b : b + dh] += wo[:, a : a + dh]
        heads = torch.ones(att.num_heads, dtype=torch.bool)
        for src in mapping:
            heads[src * g : (src + 1) * g] = False
        masks = MaskSet()
        masks.layer(layer).heads = heads
        zero_masked(model, masks, topo)


@dataclass
class HeadStep:
    """What one head-pruning pass did: the kept query heads per layer and the merges (layer, head, into)."""

    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    merges: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return len(self.merges)


def prune_redundant_heads(
    model: nn.Module,
    topo: Topology,
    theta: float,
    theta_mode: str = "absolute",
    merge: bool = True,
    keep: dict[int, torch.Tensor] | None = None,
) -> HeadStep:
    """One pass over every layer; `keep` holds the query-head masks of earlier passes (True = kept)."""
    step = HeadStep()
    for b in topo.blocks:
        att = b.attention
        if att is None or att.num_heads == 0:
            continue
        current = (keep or {}).get(b.index)
        current = torch.ones(att.num_heads, dtype=torch.bool) if current is None else current.bool().cpu().clone()
        alive = current.view(att.num_kv_heads, -1).any(1)
        mapping = find_redundant(model, att, theta, theta_mode, alive)
        if mapping:
            fold_units(model, topo, b.index, mapping, merge)
            g = att.group_size
            for src, dst in sorted(mapping.items()):
                current[src * g : (src + 1) * g] = False
                step.merges += [(b.index, src * g + t, dst * g + t) for t in range(g)]
        if not bool(current.any()):  # cannot happen: a dominating set is never empty
            raise AssertionError(f"layer {b.index}: the head step removed every head")
        if not bool(current.all()):
            step.keep[b.index] = current
    return step
