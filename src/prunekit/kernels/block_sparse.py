"""Block-sparse linears: whole B x B blocks of a weight are zero, and only the kept blocks are multiplied.

Why a CPU kernel of our own: PyTorch's CPU BSR matmul is slower than the dense GEMM even at 20% block
density (METHODS.md 3f). Ours computes y^T = W x^T one block-row of W at a time. At pack time the kept blocks
of each block-row are laid side by side into one (B, k*B) matrix; at run time the k*B rows of x^T that they
read (each a contiguous run of `tokens` values) are gathered into a reused buffer and one GEMM
(B x kB) @ (kB x tokens) writes the block-row's B output rows, bias included. The work follows the kept
blocks; the gather copies about 1/(2B) of the GEMM's flops in values; Python runs one iteration per
block-row. A second CPU strategy, `runs`, copies nothing: per block-row, each run of adjacent kept blocks is
one GEMM on a strided column slice of x, accumulated into the row's output slice (fewer bytes moved, more and
smaller GEMMs); which one wins depends on shape, density and machine, so packing times both. On CUDA the
candidates are PyTorch's Triton BSR kernels (`to_sparse_bsr` + `F.linear`), where the build has them, and
the gather kernel.

`BlockSparseLinear` keeps the dense `weight` (zero blocks included) as its parameter, so state-dict keys and
shapes, saving, loading, training and ONNX export (all on the dense path) are those of the linear it
replaces; the packed blocks are a cache, rebuilt when the weight changes (its version counter) or moves.
`pack_block_sparse` installs it only where a timing at the model's typical shape says it beats dense.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.core.threads import torch_threads
from prunekit.topology import describe, get_module
from prunekit.topology.base import set_module
from prunekit.topology.modules import ScatterLinear

Backend = Literal["gather", "runs", "bsr"]
BLOCK_CANDIDATES = (64, 32, 16, 8)


def block_mask(weight: torch.Tensor, block: int) -> torch.Tensor:
    """(out/B, in/B) bool: which B x B tiles of an (out, in) weight hold a non-zero."""
    out_f, in_f = weight.shape
    if out_f % block or in_f % block:
        raise UsageError(f"block {block} does not divide the weight shape {tuple(weight.shape)}")
    tiles = weight.detach().reshape(out_f // block, block, in_f // block, block)
    return tiles.ne(0).any(dim=3).any(dim=1)


def block_density(weight: torch.Tensor, block: int) -> float:
    """Fraction of B x B tiles with a non-zero."""
    return float(block_mask(weight, block).float().mean())


def infer_block(weight: torch.Tensor, candidates: tuple[int, ...] = BLOCK_CANDIDATES) -> int | None:
    """The largest block size whose zero tiles cover all that the smallest fitting size's tiles cover (the
    pattern the weight was pruned with); None when no tile is zero."""
    fitting = sorted(b for b in candidates if weight.shape[0] % b == 0 and weight.shape[1] % b == 0)
    if not fitting:
        return None
    base = block_density(weight, fitting[0])
    if base >= 1.0:
        return None
    return max(b for b in fitting if block_density(weight, b) <= base + 1e-9)


@dataclass
class PackedBlocks:
    """The kept blocks of one weight grouped by block-row, as the gather kernel reads them."""

    block: int
    out_features: int
    in_features: int
    rows: list[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor | None]]  # (out rows, in index, W_r, bias)
    empty_rows: torch.Tensor  # output features of block-rows without a kept block (bias only)
    empty_bias: torch.Tensor | None
    max_width: int
    kept_blocks: int


@torch.no_grad()
def pack_blocks(weight: torch.Tensor, bias: torch.Tensor | None, block: int) -> PackedBlocks:
    w = weight.detach()
    keep = block_mask(w, block)
    offsets = torch.arange(block, device=w.device)
    rows, empty = [], []
    for r in range(keep.shape[0]):
        cols = torch.nonzero(keep[r]).flatten()
        out = slice(r * block, (r + 1) * block)
        if cols.numel() == 0:
            empty.append(torch.arange(out.start, out.stop, device=w.device))
            continue
        index = (cols[:, None] * block + offsets).reshape(-1)
        packed = w[out].index_select(1, index).contiguous()
        b = bias.detach()[out].reshape(block, 1).contiguous() if bias is not None else None
        rows.append((out, index, packed, b))
    empty_rows = torch.cat(empty) if empty else torch.zeros(0, dtype=torch.long, device=w.device)
    empty_bias = bias.detach()[empty_rows] if bias is not None and empty_rows.numel() else None
    return PackedBlocks(
        block=block,
        out_features=w.shape[0],
        in_features=w.shape[1],
        rows=rows,
        empty_rows=empty_rows,
        empty_bias=empty_bias,
        max_width=max((idx.numel() for _, idx, _, _ in rows), default=0),
        kept_blocks=int(keep.sum()),
    )


def gather_linear(x: torch.Tensor, packed: PackedBlocks) -> torch.Tensor:
    """y = x W^T + b for a 2-D x (tokens, in) with the gather kernel; no autograd (out= ops)."""
    n = x.shape[0]
    xt = x.t().contiguous()
    yt = x.new_empty(packed.out_features, n)
    buf = x.new_empty(packed.max_width, n)
    for out, index, w, b in packed.rows:
        g = buf[: index.numel()]
        torch.index_select(xt, 0, index, out=g)
        if b is None:
            torch.mm(w, g, out=yt[out])
        else:
            torch.addmm(b, w, g, out=yt[out])
    if packed.empty_rows.numel():
        if packed.empty_bias is None:
            yt.index_fill_(0, packed.empty_rows, 0.0)
        else:
            yt.index_copy_(0, packed.empty_rows, packed.empty_bias[:, None].expand(-1, n))
    return yt.t().contiguous()


@dataclass
class PackedRuns:
    """The kept blocks of one weight as runs of adjacent blocks per block-row, for the `runs` kernel."""

    block: int
    out_features: int
    in_features: int
    rows: list[tuple[slice, list[tuple[slice, torch.Tensor]]]]  # (out rows, [(in columns, W_run^T)])
    bias: torch.Tensor | None
    empty_rows: torch.Tensor


@torch.no_grad()
def pack_runs(weight: torch.Tensor, bias: torch.Tensor | None, block: int) -> PackedRuns:
    w = weight.detach()
    keep = block_mask(w, block).cpu()
    rows, empty = [], []
    for r in range(keep.shape[0]):
        out = slice(r * block, (r + 1) * block)
        cols = torch.nonzero(keep[r]).flatten().tolist()
        if not cols:
            empty.append(torch.arange(out.start, out.stop, device=w.device))
            continue
        runs, start = [], cols[0]
        for a, b in zip(cols, [*cols[1:], None], strict=True):
            if b != a + 1:  # a run of adjacent kept blocks ends at a
                cs = slice(start * block, (a + 1) * block)
                runs.append((cs, w[out, cs].t().contiguous()))
                start = b
        rows.append((out, runs))
    return PackedRuns(
        block=block,
        out_features=w.shape[0],
        in_features=w.shape[1],
        rows=rows,
        bias=None if bias is None else bias.detach(),
        empty_rows=torch.cat(empty) if empty else torch.zeros(0, dtype=torch.long, device=w.device),
    )


def runs_linear(x: torch.Tensor, packed: PackedRuns) -> torch.Tensor:
    """y = x W^T + b for a 2-D x with the `runs` kernel: strided GEMMs accumulated in place; no autograd."""
    y = x.new_empty(x.shape[0], packed.out_features)
    for out, runs in packed.rows:
        ys = y[:, out]
        cs, wt = runs[0]
        if packed.bias is None:
            torch.mm(x[:, cs], wt, out=ys)
        else:
            torch.addmm(packed.bias[out], x[:, cs], wt, out=ys)
        for cs, wt in runs[1:]:
            ys.addmm_(x[:, cs], wt)
    if packed.empty_rows.numel():
        if packed.bias is None:
            y.index_fill_(1, packed.empty_rows, 0.0)
        else:
            y.index_copy_(1, packed.empty_rows, packed.bias[packed.empty_rows].expand(x.shape[0], -1))
    return y


def block_sparse_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, block: int = 32, kernel: str = "gather"
) -> torch.Tensor:
    """Functional form (packs on every call; for checks): F.linear(x, weight, bias) through a CPU kernel."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        if kernel == "runs":
            y = runs_linear(x2, pack_runs(weight, bias, block))
        else:
            y = gather_linear(x2, pack_blocks(weight, bias, block))
    return y.reshape(*lead, weight.shape[0])


def _tracing() -> bool:
    """Export, scripting and compilation see the dense path (a plain linear they all know)."""
    checks = (
        getattr(torch.onnx, "is_in_onnx_export", None),
        getattr(torch.compiler, "is_exporting", None),
        getattr(torch.compiler, "is_compiling", None),
        torch.jit.is_tracing,
        torch.jit.is_scripting,
    )
    return any(f is not None and f() for f in checks)


class BlockSparseLinear(nn.Linear):
    """A linear (or row-scattering ScatterLinear) that multiplies only its kept B x B blocks at inference.

    Shares the replaced module's `weight` / `bias` parameters (and `out_index`): nothing is copied and the
    state dict is unchanged. The block kernel has no backward, so with gradients enabled (training), under
    export / tracing / compilation, or for another dtype the forward is the dense F.linear.
    """

    def __init__(self, linear: nn.Linear, block: int, backend: Backend = "gather") -> None:
        nn.Module.__init__(self)
        if not isinstance(linear, nn.Linear):
            raise UsageError(f"BlockSparseLinear replaces an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        index = getattr(linear, "out_index", None)
        if index is not None:
            self.register_buffer("out_index", index)
            self.full_features = linear.full_features
        block_mask(self.weight, block)  # refuses a block that does not divide the weight
        self.block = int(block)
        self.backend: Backend = backend
        self._cache: tuple[tuple, Any] | None = None

    def extra_repr(self) -> str:
        extra = f", scattered_into={self.full_features}" if hasattr(self, "full_features") else ""
        return f"{super().extra_repr()}, block={self.block}, backend={self.backend}{extra}"

    def _key(self, device: torch.device) -> tuple:
        b = self.bias
        return (device, self.backend, self.weight._version, self.weight.data_ptr(),
                None if b is None else (b._version, b.data_ptr()))  # fmt: skip

    def packed(self, device: torch.device | None = None) -> Any:
        """The packed weight for `device` (PackedBlocks for the gather kernel, a BSR tensor for `bsr`)."""
        device = device or self.weight.device
        key = self._key(device)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                w = self.weight.detach().to(device)
                b = None if self.bias is None else self.bias.detach().to(device)
                if self.backend == "bsr":
                    value = w.to_sparse_bsr((self.block, self.block))
                elif self.backend == "runs":
                    value = pack_runs(w, b, self.block)
                else:
                    value = pack_blocks(w, b, self.block)
            self._cache = (key, value)
        return self._cache[1]

    def _dense_path(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() or x.dtype != self.weight.dtype or x.numel() == 0 or _tracing()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense_path(x):
            y = F.linear(x, self.weight, self.bias)
        else:
            lead = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features)
            if self.backend == "bsr":
                y = F.linear(x2, self.packed(x.device), self.bias)
            elif self.backend == "runs":
                y = runs_linear(x2, self.packed(x.device))
            else:
                y = gather_linear(x2, self.packed(x.device))
            y = y.reshape(*lead, self.out_features)
        if hasattr(self, "out_index"):
            out = y.new_zeros(*y.shape[:-1], self.full_features)
            y = out.index_copy(-1, self.out_index, y)
        return y

    def to_linear(self) -> nn.Linear:
        """The plain module again (sharing the parameters)."""
        if hasattr(self, "out_index"):
            new = ScatterLinear(self.in_features, self.out_features, self.full_features, bias=self.bias is not None)
            new.out_index = self.out_index
        else:
            new = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        new.weight = self.weight
        new.bias = self.bias
        return new


def _time_pair(fa, fb, x: torch.Tensor, repeats: int, warmup: int) -> tuple[float, float]:
    """Median ms of two functions on x, interleaved (ABBA) so drift hits both alike."""

    def once(f) -> float:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t = time.perf_counter()
        f(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return (time.perf_counter() - t) * 1000.0

    for _ in range(warmup):
        once(fa), once(fb)
    ta, tb = [], []
    for r in range(repeats):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            (ta if which == 0 else tb).append(once(fa if which == 0 else fb))
    return statistics.median(ta), statistics.median(tb)


def _backends(device: torch.device) -> list[Backend]:
    return ["bsr", "gather"] if device.type == "cuda" else ["gather", "runs"]


def _works(candidate: BlockSparseLinear, x: torch.Tensor) -> bool:
    """The backend runs here and matches the dense result (a BSR build without Triton raises or differs)."""
    try:
        with torch.inference_mode():
            ref = F.linear(x, candidate.weight, candidate.bias)
            got = candidate(x)
            if hasattr(candidate, "out_index"):
                got = got[..., candidate.out_index]
        tol = 1e-3 * max(1.0, float(ref.abs().max()))
        return bool(torch.allclose(got.float(), ref.float(), atol=tol, rtol=1e-3))
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return False


def pack_block_sparse(
    model: nn.Module,
    *,
    names: list[str] | None = None,
    block: int | None = None,
    tokens: int = 4096,
    min_speedup: float = 1.05,
    always: bool = False,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
) -> dict[str, Any]:
    """Replace block-sparse linears of `model` (the blocks' prunable linears, or `names`) in place by
    BlockSparseLinear where it is at least `min_speedup` times faster than dense, timed on `tokens` random
    rows (the model's typical batch x sequence) on the weight's device; `always` packs every block-sparse
    candidate without timing. `block` None: inferred per matrix from its zero tiles. Returns a report:
    per matrix block, density, backend, dense_ms, sparse_ms, speedup, packed (or the reason it was skipped).
    """
    names = names if names is not None else describe(model).prunable_linears()
    report: list[dict[str, Any]] = []
    with torch_threads(threads):
        for name in names:
            module = get_module(model, name)
            if isinstance(module, BlockSparseLinear):  # packed before: decide again
                module = module.to_linear()
            entry: dict[str, Any] = {"name": name, "packed": False}
            report.append(entry)
            if type(module).__name__ not in ("Linear", "ScatterLinear"):
                entry["skipped"] = f"{type(module).__name__} is not a plain linear"
                continue
            b = block or infer_block(module.weight)
            fits = b is not None and module.weight.shape[0] % b == 0 and module.weight.shape[1] % b == 0
            if not fits:
                entry["skipped"] = "no block structure" if b is None else f"block {b} does not divide the weight"
                continue
            density = block_density(module.weight, b)
            entry.update(block=b, density=round(density, 5))
            if density >= 1.0:
                entry["skipped"] = "no zero block"
                continue
            x = torch.randn(tokens, module.in_features, device=module.weight.device, dtype=module.weight.dtype)
            best: tuple[float, BlockSparseLinear] | None = None
            dense_ms = None
            for backend in _backends(module.weight.device):
                candidate = BlockSparseLinear(module, b, backend)
                if not _works(candidate, x[:8]):
                    continue
                if always:
                    best = (0.0, candidate)
                    break
                with torch.inference_mode():
                    d_ms, s_ms = _time_pair(module, candidate, x, repeats, warmup)  # same scatter in both
                dense_ms = d_ms if dense_ms is None else min(dense_ms, d_ms)
                if best is None or s_ms < best[0]:
                    best = (s_ms, candidate)
            if best is None:
                entry["skipped"] = "no block-sparse backend runs on this device"
                set_module(model, name, module)
                continue
            sparse_ms, candidate = best
            entry["backend"] = candidate.backend
            if not always:
                entry.update(dense_ms=round(dense_ms, 4), sparse_ms=round(sparse_ms, 4))
                entry["speedup"] = round(dense_ms / sparse_ms, 4) if sparse_ms > 0 else None
            if always or dense_ms >= min_speedup * sparse_ms:
                entry["packed"] = True
                set_module(model, name, candidate)
            else:
                set_module(model, name, module)
    packed = sum(e["packed"] for e in report)
    return {"tokens": tokens, "min_speedup": min_speedup, "packed": packed, "matrices": report}


def unpack_block_sparse(model: nn.Module) -> int:
    """Put plain linears back in place of every BlockSparseLinear; returns how many."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, BlockSparseLinear)]
    for name, module in found:
        set_module(model, name, module.to_linear())
    return len(found)
