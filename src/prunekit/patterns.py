"""Sparsity patterns by the names users know, and the exact projections onto them.

All matrices are in (out_features, in_features) orientation. N:M groups run along the input
dimension (NVIDIA's convention: 2:4 keeps 2 of every 4 consecutive weights of a row).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from prunekit.core.errors import UsageError

STRUCTURED = ("head", "neuron", "row", "layer")


@dataclass(frozen=True)
class Pattern:
    kind: str  # unstructured | nm | block | head | neuron | row | layer
    n: int = 0
    m: int = 0
    block: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.block[0]}x{self.block[1]}"
        return self.kind

    @property
    def fine_grained(self) -> bool:
        return self.kind in ("unstructured", "nm", "block")


def parse_pattern(text: str) -> Pattern:
    s = str(text).strip().lower()
    if s.endswith("s") and s[:-1] in STRUCTURED:  # heads, neurons, rows, layers
        s = s[:-1]
    if s in ("unstructured", *STRUCTURED):
        return Pattern(s)
    if match := re.fullmatch(r"(\d+):(\d+)", s):
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise UsageError(f"invalid N:M pattern '{text}': need 0 < N < M, e.g. 2:4 (keep 2 of every 4)")
        return Pattern("nm", n=n, m=m)
    if match := re.fullmatch(r"(\d+)x(\d+)", s):
        b = (int(match[1]), int(match[2]))
        if min(b) < 1:
            raise UsageError(f"invalid block pattern '{text}': block sides must be positive, e.g. 32x32")
        return Pattern("block", block=b)
    raise UsageError(
        f"unknown sparsity pattern '{text}': use unstructured, N:M (e.g. 2:4), BxB (e.g. 32x32), "
        f"or one of {', '.join(STRUCTURED)}"
    )


def check_sparsity(value: float, what: str = "sparsity") -> float:
    if not 0.0 <= float(value) < 1.0:
        raise UsageError(f"{what} {value} is outside [0, 1): give the fraction removed, e.g. 0.5")
    return float(value)


def nm_mask(weight: torch.Tensor, n: int, m: int, pad_tail: bool = False) -> torch.Tensor:
    """Keep the N largest |w| of every M consecutive inputs: the Euclidean projection onto N:M sparsity."""
    out_f, in_f = weight.shape
    tail = in_f % m
    if tail and not pad_tail:
        raise UsageError(
            f"{n}:{m} needs in_features divisible by {m}, this matrix has {in_f}; "
            "set pad_tail: true to keep the last partial group dense"
        )
    body = in_f - tail
    mask = torch.ones_like(weight, dtype=torch.bool)
    if body:
        groups = weight[:, :body].abs().reshape(out_f, body // m, m)
        top = groups.topk(n, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        mask[:, :body] = keep.reshape(out_f, body)
    return mask


def nm_project(weight: torch.Tensor, n: int, m: int, pad_tail: bool = False) -> torch.Tensor:
    return weight * nm_mask(weight, n, m, pad_tail)


def check_block(shape: tuple[int, int], block: tuple[int, int], name: str = "matrix") -> None:
    if shape[0] % block[0] or shape[1] % block[1]:
        raise UsageError(
            f"block {block[0]}x{block[1]} does not divide {name} of shape {tuple(shape)}: "
            "choose a block size that divides both sides (e.g. 16x16 or 32x32)"
        )


def block_scores(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """L2 norm of each B0 x B1 tile: (out/B0, in/B1)."""
    check_block(tuple(weight.shape), block)
    o, i = weight.shape
    tiles = weight.reshape(o // block[0], block[0], i // block[1], block[1])
    return tiles.pow(2).sum(dim=(1, 3)).sqrt()


def expand_blocks(block_mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    return block_mask.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask keeping the `keep` highest scores (ties broken by position, deterministically)."""
    flat = scores.flatten()
    keep = max(0, min(int(keep), flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view_as(scores)


def kept_count(total: int, sparsity: float, minimum: int = 0) -> int:
    return max(minimum, min(total, math.ceil(round(total * (1.0 - sparsity), 6))))


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """At most N non-zeros in each group of M consecutive inputs of an (out, in) weight (in % M == 0)."""
    return bool(((weight.reshape(weight.shape[0], -1, m) != 0).sum(-1) <= n).all())
