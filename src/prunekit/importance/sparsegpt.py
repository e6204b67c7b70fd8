"""SparseGPT (Frantar & Alistarh, ICML 2023): prune a linear's weights and update the ones that stay so the layer's
output on calibration inputs changes as little as possible.

With H = X^T X over the calibration tokens (dampened by `damp` x its mean diagonal, so it is invertible), the
columns of W are visited left to right in blocks: within a block, the weights to remove are those with the least
w^2 / [H^-1]_jj^2 (the OBS saliency: the loss increase of removing w alone), per tile of the block (unstructured,
`sparsity` of it) or per row and group of M columns (N:M); each removed weight's error is spread over the row's
columns not yet visited through the upper Cholesky factor of H^-1 (the OBS update), and the block's accumulated
error onto every later block at once. Rows are independent, so all rows of W go together. No gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.core.threads import torch_threads
from prunekit.importance.calibration import input_statistics


def input_hessians(model: nn.Module, names: list[str], batches: Iterable[dict]) -> tuple[dict[str, torch.Tensor], int]:
    """X^T X (in x in, fp64) over the non-padding calibration tokens of every named linear, one forward per batch
    on the model as it is (not layer by layer: every linear sees the dense model's inputs); and the token count."""
    return input_statistics(model, names, batches, lambda x: x.t() @ x, "sparsegpt")


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; dead inputs (zero diagonal) get a unit
    diagonal, so their weights are free to go."""
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * float(torch.diag(h).mean()))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned and updated weight (out, in) and its keep-mask, for `sparsity` (unstructured, chosen per block
    of `block` columns) or `nm` (N kept of every M consecutive inputs of a row)."""
    if (sparsity is None) == (nm is None):
        raise UsageError("sparsegpt needs a sparsity or an N:M pattern, not both")
    if nm is not None and block % nm[1]:
        raise UsageError(f"block {block} must be a multiple of M = {nm[1]}")
    w = weight.detach().double().clone()
    out_f, in_f = w.shape
    if nm is not None and in_f % nm[1]:
        raise UsageError(f"{nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}, this matrix has {in_f}")
    u = _inverse_cholesky(hessian.to(w.device), damp)
    keep = torch.ones_like(w, dtype=torch.bool)
    # one thread on a CPU: the column loop is thousands of small operations, where torch's thread pool only adds
    # synchronisation (measured 7x slower with 2 threads when the cores are shared)
    with torch_threads(1 if w.device.type == "cpu" else None):
        _prune_columns(w, u, keep, sparsity, nm, block)
    return w.to(weight.dtype), keep


def _prune_columns(w: torch.Tensor, u: torch.Tensor, keep: torch.Tensor, sparsity: float | None,
                   nm: tuple[int, int] | None, block: int) -> None:  # fmt: skip
    """The blocked OBS sweep, in place on w (fp64) and keep."""
    in_f = w.shape[1]
    for b0 in range(0, in_f, block):
        b1 = min(b0 + block, in_f)
        wb, ub = w[:, b0:b1].clone(), u[b0:b1, b0:b1]
        errors = torch.zeros_like(wb)
        drop = torch.zeros_like(wb, dtype=torch.bool)
        if sparsity is not None:
            saliency = wb.pow(2) / torch.diag(ub).pow(2)[None, :]
            k = int(saliency.numel() * sparsity)
            if k:
                threshold = saliency.flatten().kthvalue(k).values
                drop = saliency <= threshold
                if int(drop.sum()) > k:  # ties at the threshold: drop exactly k
                    order = saliency.flatten().argsort()[:k]
                    drop = torch.zeros(saliency.numel(), dtype=torch.bool, device=w.device)
                    drop[order] = True
                    drop = drop.view_as(wb)
        for j in range(b1 - b0):
            if nm is not None and j % nm[1] == 0:  # this group's N:M choice, on the weights as updated so far
                group = wb[:, j : j + nm[1]].pow(2) / torch.diag(ub)[j : j + nm[1]].pow(2)[None, :]
                lowest = group.topk(nm[1] - nm[0], dim=1, largest=False).indices
                drop[:, j : j + nm[1]].scatter_(1, lowest, True)
            col, d = wb[:, j], ub[j, j]
            q = torch.where(drop[:, j], torch.zeros_like(col), col)
            err = (col - q) / d
            wb[:, j:] -= err[:, None] * ub[j, j:][None, :]
            wb[:, j] = q
            errors[:, j] = err
        w[:, b0:b1] = wb
        keep[:, b0:b1] = ~drop
        w[:, b1:] -= errors @ u[b0:b1, b1:]
