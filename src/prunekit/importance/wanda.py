"""Wanda's weight importance (Sun et al., ICLR 2024): |W_ij| * ||X_j||, the weight's magnitude times the norm of the
input feature it reads over calibration tokens.

Why activations: a small weight on a feature that is always large moves the output more than a large weight on a
feature that is always near zero; decoders such as SmolLM2 have a few input features hundreds of times larger
than the rest (weight magnitude alone removes what they read). Scores are compared within each output row
(unstructured: the row keeps its top fraction) or within every M consecutive inputs of a row (N:M), as the paper
does; no weight update (SparseGPT's reconstruction is the next step).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.importance.calibration import input_statistics
from prunekit.patterns import nm_mask
from prunekit.topology import get_module, weight_view


def input_squares(model: nn.Module, names: list[str], batches: Iterable[dict]) -> tuple[dict[str, torch.Tensor], int]:
    """sum of x_j^2 over the non-padding calibration tokens, per input feature j of each named linear (fp64);
    and the token count."""
    return input_statistics(model, names, batches, lambda x: x.pow(2).sum(0), "wanda")


def input_norms(model: nn.Module, names: list[str], batches: Iterable[dict]) -> tuple[dict[str, torch.Tensor], int]:
    """||X_j||_2 over the non-padding calibration tokens, per input feature j of each named linear; and the
    token count."""
    sums, tokens = input_squares(model, names, batches)
    return {n: s.sqrt().float() for n, s in sums.items()}, tokens


def wanda_scores(model: nn.Module, norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|W| * ||X_j|| per weight, (out, in) in every family's orientation (weight_view)."""
    return {n: weight_view(get_module(model, n)).detach().abs().float() * norms[n].to(
        get_module(model, n).weight.device)[None, :] for n in norms}  # fmt: skip


def row_masks(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the top (1 - sparsity) of every output row by score."""
    out_f, in_f = scores.shape
    drop = int(round(in_f * sparsity))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        lowest = scores.topk(drop, dim=1, largest=False).indices
        keep.scatter_(1, lowest, False)
    return keep


def wanda_masks(scores: dict[str, torch.Tensor], sparsity: float | None, nm: tuple[int, int] | None,
                pad_tail: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per matrix keep-masks: per-row top fraction (`sparsity`) or N:M by score (`nm`)."""
    if nm is not None:
        return {n: nm_mask(s, nm[0], nm[1], pad_tail) for n, s in scores.items()}
    if sparsity is None:
        raise UsageError("wanda needs a sparsity or an N:M pattern")
    return {n: row_masks(s, sparsity) for n, s in scores.items()}
