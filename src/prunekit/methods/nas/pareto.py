"""Pareto fronts, non-domination ranks and exact hypervolume, for minimised objectives.

Small and dependency-free so the searchers, the progress bar and the report share one definition (checked in
the tests against brute force and against optuna's own implementations). A point is on the front when no other
point dominates it (no worse in every objective, better in one); equal points are all on the front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool((a <= b).all() and (a < b).any())


def pareto_mask(points: Sequence[Sequence[float]]) -> np.ndarray:
    """Boolean mask of the non-dominated points."""
    p = np.asarray(points, dtype=float)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    le = (p[:, None, :] <= p[None, :, :]).all(-1)  # le[j, i]: j no worse than i everywhere
    lt = (p[:, None, :] < p[None, :, :]).any(-1)
    dominated = (le & lt).any(0)
    return ~dominated


def nondominated_ranks(points: Sequence[Sequence[float]]) -> np.ndarray:
    """0 for the front, 1 for the front of the rest, and so on (NSGA-II's sorting)."""
    p = np.asarray(points, dtype=float)
    ranks = np.full(len(p), -1, dtype=np.int64)
    left = np.arange(len(p))
    r = 0
    while left.size:
        front = pareto_mask(p[left])
        ranks[left[front]] = r
        left = left[~front]
        r += 1
    return ranks


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by the points and bounded by the reference point (exact). Points not strictly better
    than the reference in every objective add nothing."""
    ref = np.asarray(reference, dtype=float)
    p = np.asarray(points, dtype=float).reshape(-1, ref.size)
    p = p[(p < ref).all(1)]
    if p.size == 0:
        return 0.0
    p = p[pareto_mask(p)]
    return float(_hv(np.unique(p, axis=0), ref))


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    if p.shape[1] == 1:
        return float(ref[0] - p[:, 0].min())
    if p.shape[1] == 2:  # sweep in the first objective, keeping the best second one so far
        p = p[np.lexsort((p[:, 1], p[:, 0]))]
        total, best = 0.0, ref[1]
        for x, y in p:
            if y < best:
                total += (ref[0] - x) * (best - y)
                best = y
        return total
    # slice along the last objective: between consecutive levels, the (d-1)-volume of the points below
    p = p[np.argsort(p[:, -1])]
    total = 0.0
    for i in range(len(p)):
        top = p[i + 1, -1] if i + 1 < len(p) else ref[-1]
        if top > p[i, -1]:
            below = p[: i + 1, :-1]
            total += _hv(below[pareto_mask(below)], ref[:-1]) * (top - p[i, -1])
    return total
