"""Selection under a latency budget: which heads and FFN neurons go when each kind of unit saves the latency that
was measured for it on the device (`prunekit.costs` measures; this module only decides).

A head and a neuron do not cost the same per parameter (attention's softmax and per-head matmuls against the FFN's
two large GEMMs), and a unit's score is worth comparing with what its removal saves, not with its size. The
allocation removes, one unit at a time, the unit with the lowest score per millisecond saved, until the predicted
latency meets `dense_ms / speedup`: the classic greedy for a knapsack whose item costs are (piecewise) linear.

Scores must be comparable between heads and neurons for that. The gradient criteria are (taylor, fisher and
sensitivity estimate the loss change of removing the unit, whatever its kind); activation and magnitude are not
(a head's context norm and a neuron's activation are different quantities), so they are divided by their kind's
mean over all layers first.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass

import torch

from prunekit.core.errors import UsageError
from prunekit.importance.scores import UnitScores
from prunekit.importance.select import select_heads
from prunekit.masks import MaskSet
from prunekit.patterns import topk_mask
from prunekit.topology import Topology

COMPARABLE = (
    "taylor",
    "taylor-elementwise",
    "fisher",
    "sensitivity",
)  # loss change of removing a unit, whatever its kind


@dataclass
class CostCurve:
    """Latency (ms) the whole model saves when the fraction `removed[i]` of this kind of unit goes from every layer:
    `saved[i]`, measured; linear between the points and from the last point on to removing everything. `removed`
    starts at 0 (saved 0) and rises; `saved` never falls (a measurement that did is lifted to the one before)."""

    removed: list[float]
    saved: list[float]

    def __post_init__(self) -> None:
        if len(self.removed) != len(self.saved) or len(self.removed) < 2 or self.removed[0] != 0:
            raise ValueError("a cost curve needs points from removed=0 on")
        self.saved = [max(self.saved[: i + 1]) for i in range(len(self.saved))]  # monotone

    def at(self, fraction: float) -> float:
        """Saved ms at a removed fraction, by linear interpolation (extrapolation past the last point)."""
        r, s = self.removed, self.saved
        i = next((j for j in range(1, len(r)) if fraction <= r[j]), len(r) - 1)
        slope = (s[i] - s[i - 1]) / (r[i] - r[i - 1])
        return s[i - 1] + slope * (fraction - r[i - 1])


@dataclass
class UnitCosts:
    """What heads and FFN neurons cost on one device at one batch and sequence length (`measured`: the raw points
    the curves were fitted to, for the report)."""

    dense_ms: float
    heads: CostCurve | None
    neurons: CostCurve | None
    batch: int = 32
    seq_len: int = 128
    measured: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UnitCosts:
        curve = lambda c: None if c is None else CostCurve(**c)  # noqa: E731
        return cls(d["dense_ms"], curve(d["heads"]), curve(d["neurons"]), d.get("batch", 32), d.get("seq_len", 128),
                   d.get("measured"))  # fmt: skip


def _normalised(scores: UnitScores) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    if scores.criterion in COMPARABLE:
        return scores.heads, scores.neurons

    def by_mean(d: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        if not d:
            return d
        mean = torch.cat([s.flatten().float() for s in d.values()]).mean().clamp_min(1e-30)
        return {i: s.float() / mean for i, s in d.items()}

    return by_mean(scores.heads), by_mean(scores.neurons)


def allocate(
    topo: Topology,
    scores: UnitScores,
    costs: UnitCosts,
    speedup: float,
    *,
    min_heads: int = 1,
    min_neurons: int = 1,
) -> tuple[MaskSet, float]:
    """Masks whose compacted model is predicted to run `speedup` times faster than the dense one, removing the units
    with the least score per ms saved; returns them and the predicted latency (ms). A layer's share of a kind's
    saving is its share of that kind's units (equal in a uniform model). Raises UsageError when even removing every
    removable unit would not reach the speedup."""
    if speedup < 1:
        raise UsageError(f"speedup must be at least 1, got {speedup}")
    target = costs.dense_ms / speedup
    heads, neurons = _normalised(scores)
    kinds = {"heads": (heads, costs.heads, min_heads), "neurons": (neurons, costs.neurons, min_neurons)}
    order: dict[tuple[str, int], torch.Tensor] = {}  # (kind, layer) -> unit indices, least important first
    removed: dict[tuple[str, int], int] = {}
    share: dict[tuple[str, int], float] = {}
    for kind, (per_layer, curve, _) in kinds.items():
        total = sum(s.numel() for s in per_layer.values())
        for i, s in per_layer.items():
            if curve is not None and total:
                order[kind, i] = torch.argsort(s.float(), stable=True)
                removed[kind, i] = 0
                share[kind, i] = s.numel() / total

    def saved(key: tuple[str, int], count: int) -> float:
        kind, i = key
        n = order[key].numel()
        return share[key] * kinds[kind][1].at(count / n)  # type: ignore[union-attr]

    def candidate(key: tuple[str, int]):
        kind, i = key
        per_layer, _, minimum = kinds[kind]
        n, r = order[key].numel(), removed[key]
        if n - r <= min(minimum, n):
            return None
        gain = saved(key, r + 1) - saved(key, r)
        score = float(per_layer[i][order[key][r]])
        price = score / gain if gain > 0 else float("inf")
        return (price, score, kind, i)

    heap = [c for key in order if (c := candidate(key)) is not None]
    heapq.heapify(heap)
    latency = costs.dense_ms
    while latency > target and heap:
        _, _, kind, i = heapq.heappop(heap)
        key = (kind, i)
        latency -= saved(key, removed[key] + 1) - saved(key, removed[key])
        removed[key] += 1
        if (c := candidate(key)) is not None:
            heapq.heappush(heap, c)
    if latency > target * (1 + 1e-9):
        raise UsageError(
            f"a {speedup:g}x speedup is out of reach by removing heads and FFN neurons (predicted at most "
            f"{costs.dense_ms / latency:.2f}x): lower the speedup"
        )
    masks = MaskSet()
    blocks = {b.index: b for b in topo.blocks}
    for (kind, i), r in removed.items():
        n = order[kind, i].numel()
        per_layer = kinds[kind][0]
        if kind == "heads":
            masks.layer(i).heads = select_heads(per_layer[i], n - r, blocks[i].attention.num_kv_heads)
        else:
            masks.layer(i).neurons = topk_mask(per_layer[i], n - r)
    return masks, latency
