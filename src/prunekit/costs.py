"""What heads and FFN neurons cost on this device: forward latency measured on compacted copies of the model.

The latency a structure saves is not proportional to its parameters (attention's per-head matmuls and softmax
scale with the sequence, the FFN's GEMMs do not; small GEMMs lose efficiency), so `importance.allocate` spends a
latency budget with curves measured here: the model with 25, 50 and 75% of its heads (then of its FFN neurons)
removed from every layer, compacted and timed in turns at the batch and sequence length the budget is for. Seven
models, 9 forwards each; about 15 s for MiniLM-L6 at batch 32 x 128 on 2 CPU cores.

The allocation spends a straight line through the origin fitted to each kind's three points (least squares), not the
points themselves: on a shared 2-core VM the points of two measurements of one model differed in shape (convex in
one, concave in the other), and a greedy allocation follows the shape, so a bend that was noise emptied whole layers
in one run and not in the other. The saving per unit of a kind is what FLOPs say it is, up to noise, so the fit keeps
the measured level and drops the noisy shape; the points stay in `UnitCosts.measured` for the report.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from prunekit.bench import interleaved_latency
from prunekit.compact.remove import compact
from prunekit.core.errors import UsageError
from prunekit.importance.allocate import CostCurve, UnitCosts
from prunekit.importance.select import select_heads
from prunekit.masks import MaskSet
from prunekit.topology import Topology, describe

FRACTIONS = (0.25, 0.5, 0.75)


def _uniform(topo: Topology, kind: str, fraction: float) -> MaskSet:
    """The fraction `fraction` of every layer's heads or neurons removed (which ones does not change the time)."""
    masks = MaskSet()
    for b in topo.blocks:
        if kind == "heads" and b.attention is not None and b.attention.num_heads:
            n = b.attention.num_heads
            keep = max(1, n - round(n * fraction))
            order = -torch.arange(n, dtype=torch.float)
            masks.layer(b.index).heads = select_heads(order, keep, b.attention.num_kv_heads)
        elif kind == "neurons" and b.ffn is not None:
            n = b.ffn.width
            masks.layer(b.index).neurons = torch.arange(n) < max(1, n - round(n * fraction))
    return masks


def measure_unit_costs(
    model: nn.Module,
    *,
    batch: int = 32,
    seq_len: int = 128,
    repeats: int = 7,
    warmup: int = 2,
    threads: int | None = None,
    fractions: tuple[float, ...] = FRACTIONS,
) -> UnitCosts:
    """Latency curves of removing heads and FFN neurons from every layer, measured on compacted copies timed in
    turns with the model itself (which is not changed)."""
    topo = describe(model)
    models: dict[tuple[str, float], nn.Module] = {("dense", 0.0): model}
    for kind in ("heads", "neurons"):
        if _uniform(topo, kind, 0.5).layers:
            for f in fractions:
                with torch.no_grad():
                    models[kind, f] = compact(copy.deepcopy(model), _uniform(topo, kind, f)).eval()
    ms = interleaved_latency(models, batch=batch, seq_len=seq_len, vocab_size=int(model.config.vocab_size),
                             warmup=warmup, repeats=repeats, threads=threads)  # fmt: skip
    dense = ms["dense", 0.0]
    measured = {
        kind: {"removed": [0.0, *fractions], "saved": [0.0, *(dense - ms[kind, f] for f in fractions)]}
        for kind in ("heads", "neurons")
        if (kind, fractions[0]) in ms
    }
    curves = {kind: line_through_origin(p["removed"], p["saved"]) for kind, p in measured.items()}
    return UnitCosts(dense, curves.get("heads"), curves.get("neurons"), batch, seq_len, measured)


def line_through_origin(removed: list[float], saved: list[float]) -> CostCurve:
    """The least-squares line `saved = slope * removed` (slope at least 0), as a curve from nothing to everything
    removed."""
    slope = sum(r * s for r, s in zip(removed, saved, strict=True)) / sum(r * r for r in removed)
    return CostCurve([0.0, 1.0], [0.0, max(0.0, slope)])


def read_unit_costs(path: str | Path) -> UnitCosts:
    """Unit costs saved by `prunekit costs` (measured on the device the model is for); one line if unreadable."""
    try:
        return UnitCosts.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise UsageError(
            f"unit costs file {path} does not exist: make it with `prunekit costs MODEL --out FILE`"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"unit costs file {path} is not one `prunekit costs` wrote ({exc}): measure it again"
        ) from None
