"""Unstructured sparse linears on a CPU: only the kept weights are multiplied, where that is measured faster.

Why a kernel of our own: PyTorch's CSR matmul (`torch.mm(csr, x)`) is no faster than the dense GEMM at 90%
sparsity at 32 x 128 tokens on a 2-core x86 (METHODS.md 3f has the block-sparse story). `spmm.c` computes
y^T = W x^T with every kept weight adding a scaled row of x^T to a tile of 64 outputs in registers: the work
follows the kept weights and the inner loop is a contiguous vector multiply-add. It is compiled on first use with
the machine's C compiler (`cc -O3 -march=native`, ~1 s, cached under $PRUNEKIT_CACHE/kernels) and called through
ctypes, which releases the GIL, so torch's threads split the tokens. Without a compiler the kernel is simply not a
candidate: PyTorch's CSR is, and dense stays wherever nothing beats it (`pack_sparse`'s report says which and why).

`SparseLinear` keeps the dense `weight` (zeros included) as its parameter, like `BlockSparseLinear`: state dicts,
saving, training and export see a plain linear, and the CSR form is a cache rebuilt when the weight changes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.core.threads import torch_threads
from prunekit.kernels.block_sparse import _time_pair, _tracing
from prunekit.topology import describe, get_module
from prunekit.topology.base import set_module
from prunekit.topology.modules import GatherLinear

Backend = Literal["spmm", "torch-csr"]
TILES = (16, 32, 64)  # tokens per register tile in spmm.c (TB), chosen per matrix by timing
SOURCE = Path(__file__).with_name("spmm.c")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared")


def _cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")).expanduser() / "kernels"


@cache
def compiled() -> ctypes.CDLL | None:
    """The spmm kernel built for this machine (once per source, compiler flags and CPU), or None with no C
    compiler (`compile_error()` says why)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        _errors.append("no C compiler (cc, gcc or clang) on PATH")
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + platform.processor().encode()
                         + platform.machine().encode() + compiler.encode()).hexdigest()[:16]  # fmt: skip
    target = _cache_dir() / f"spmm-{key}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            proc = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
            if proc.returncode != 0:
                _errors.append(f"{compiler} failed: {(proc.stderr or proc.stdout).strip().splitlines()[:1]}")
                return None
            os.replace(built, target)  # atomic: a concurrent build writes the same bytes
    lib = ctypes.CDLL(str(target))
    _errors.clear()
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for tile in TILES:
        f = getattr(lib, f"spmm{tile}")
        f.argtypes = [p, i64, i64, p, p, p, p, i64, p, i64, i64]
        f.restype = ctypes.c_int
    return lib


_errors: list[str] = []


def compile_error() -> str | None:
    """Why the kernel is unavailable here (None: it is, or was not tried yet)."""
    return _errors[-1] if _errors else None


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prunekit-spmm")


class Csr:
    """A weight's kept entries in CSR (int64 row pointers, int32 columns), contiguous for the C kernel. With
    `in_index` (a GatherLinear's kept input dimensions, of `full` in all) the columns are those of the full-width
    input: the kernel reads only the dimensions its weights name, so the gather itself costs nothing."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, in_index: torch.Tensor | None = None, full: int = 0
    ) -> None:
        w = weight.detach().float().cpu()
        if in_index is not None:
            scattered = torch.zeros(w.shape[0], full, dtype=w.dtype)
            scattered[:, in_index.cpu()] = w
            w = scattered
        self.out_features, self.in_features = w.shape
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            sparse = w.to_sparse_csr()
        self.crow = sparse.crow_indices().to(torch.int64).contiguous()
        self.col = sparse.col_indices().to(torch.int32).contiguous()
        self.val = sparse.values().contiguous()
        self.bias = None if bias is None else bias.detach().float().cpu().contiguous()
        self.torch_csr = sparse  # the PyTorch backend's form
        self.nnz = int(self.val.numel())


def spmm_linear(x: torch.Tensor, csr: Csr, tile: int = 32, threads: int | None = None) -> torch.Tensor:
    """y = x W^T + b for a 2-D fp32 CPU x (tokens, in) through the compiled kernel; tokens split over threads."""
    lib = compiled()
    if lib is None:
        raise UsageError(f"the unstructured sparse kernel is not available here: {compile_error()}")
    if tile not in TILES:
        raise UsageError(f"tile {tile} is not one of {TILES}")
    x = x.contiguous()
    n, d = x.shape
    tiles = -(-n // tile)
    y = torch.empty(n, csr.out_features, dtype=torch.float32)
    args = (x.data_ptr(), n, d, csr.crow.data_ptr(), csr.col.data_ptr(), csr.val.data_ptr(),
            None if csr.bias is None else csr.bias.data_ptr(), csr.out_features, y.data_ptr())  # fmt: skip
    threads = max(1, min(threads or torch.get_num_threads(), tiles))
    kernel = getattr(lib, f"spmm{tile}")
    if threads == 1:
        failed = kernel(*args, 0, tiles)
    else:
        bounds = [tiles * k // threads for k in range(threads + 1)]
        jobs = [_pool(threads).submit(kernel, *args, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        failed = sum(job.result() for job in jobs)
    if failed:
        raise MemoryError(f"the sparse kernel could not allocate its {d} x {tile} tile buffer")
    return y


def torch_csr_linear(x: torch.Tensor, csr: Csr) -> torch.Tensor:
    y = torch.mm(csr.torch_csr, x.t()).t()
    return y if csr.bias is None else y + csr.bias


class SparseLinear(nn.Linear):
    """A linear that multiplies only its non-zero weights at inference (fp32, CPU, no gradient); anything else
    (training, export, tracing, another dtype or device) takes the dense F.linear. Shares the replaced module's
    parameters (and a GatherLinear's `in_index`): nothing is copied and the state dict is unchanged."""

    def __init__(self, linear: nn.Linear, backend: Backend = "spmm", tile: int = 32) -> None:
        nn.Module.__init__(self)
        if type(linear) not in (nn.Linear, GatherLinear):
            raise UsageError(f"SparseLinear replaces an nn.Linear or GatherLinear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        self.gather = isinstance(linear, GatherLinear)
        if self.gather:  # reads `full_in_features` dimensions of its input, `in_index` of them
            self.full_in_features = linear.full_in_features
            self.register_buffer("in_index", linear.in_index)
        if backend not in ("spmm", "torch-csr") or tile not in TILES:
            raise UsageError(f"backend {backend!r} / tile {tile} unknown: use spmm or torch-csr, tile in {TILES}")
        self.backend: Backend = backend
        self.tile = tile
        self._cache: tuple[tuple, Csr] | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        return {**state, "_cache": None}  # a CSR tensor cannot be copied or pickled: rebuilt on use

    def extra_repr(self) -> str:
        tile = f", tile={self.tile}" if self.backend == "spmm" else ""
        return f"{super().extra_repr()}, backend={self.backend}{tile}"

    def csr(self) -> Csr:
        b = self.bias
        key = (self.weight._version, self.weight.data_ptr(), None if b is None else (b._version, b.data_ptr()))
        if self.gather:
            key = (*key, self.in_index._version, self.in_index.data_ptr())
        if self._cache is None or self._cache[0] != key:
            index, full = (self.in_index, self.full_in_features) if self.gather else (None, 0)
            self._cache = (key, Csr(self.weight, self.bias, index, full))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = (torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu"
                 or self.weight.device.type != "cpu" or x.numel() == 0 or _tracing())  # fmt: skip
        if dense:
            return F.linear(x.index_select(-1, self.in_index) if self.gather else x, self.weight, self.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        csr = self.csr()
        y = spmm_linear(x2, csr, self.tile) if self.backend == "spmm" else torch_csr_linear(x2, csr)
        return y.reshape(*lead, self.out_features)

    def to_linear(self) -> nn.Linear:
        shape, bias = (self.in_features, self.out_features), self.bias is not None
        with torch.device("meta"):
            if self.gather:
                new = GatherLinear(*shape, self.full_in_features, bias=bias)
                new.in_index = self.in_index
            else:
                new = nn.Linear(*shape, bias=bias)
        new.weight, new.bias = self.weight, self.bias
        return new


def candidates() -> list[tuple[Backend, int]]:
    """(backend, tile) pairs to time on this machine: the compiled kernel at every tile size where it built."""
    return ([("spmm", t) for t in TILES] if compiled() is not None else []) + [("torch-csr", TILES[0])]


def pack_sparse(
    model: nn.Module,
    *,
    names: list[str] | None = None,
    max_density: float = 0.3,
    tokens: int = 4096,
    min_speedup: float = 1.05,
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 2,
) -> dict[str, Any]:
    """Replace the model's prunable linears (or `names`) whose weights are at most `max_density` non-zero (denser
    ones never win here: the kernel is level with dense at ~70% zeros, so they are not even timed) by a
    SparseLinear where one backend is at least `min_speedup` times faster than dense, timed on `tokens` random
    rows (the model's typical batch x sequence). Returns per matrix: density, each backend's time, the chosen
    one, or why the matrix stayed dense."""
    names = names if names is not None else describe(model).prunable_linears()
    report: list[dict[str, Any]] = []
    with torch_threads(threads):
        options = candidates()
        for name in names:
            module = get_module(model, name)
            if isinstance(module, SparseLinear):
                module = module.to_linear()
                set_module(model, name, module)
            entry: dict[str, Any] = {"name": name, "packed": False}
            report.append(entry)
            if type(module) not in (nn.Linear, GatherLinear) or module.weight.device.type != "cpu":
                entry["skipped"] = f"{type(module).__name__} on {module.weight.device.type} is not a CPU nn.Linear"
                continue
            density = float(module.weight.detach().ne(0).float().mean())
            entry["density"] = round(density, 5)
            if density > max_density:
                entry["skipped"] = f"density {density:.2f} > {max_density}"
                continue
            x = torch.randn(tokens, getattr(module, "full_in_features", module.in_features))
            best: tuple[float, SparseLinear] | None = None
            with torch.inference_mode():
                for backend, tile in options:
                    candidate = SparseLinear(module, backend, tile)
                    d_ms, s_ms = _time_pair(module, candidate, x, repeats, warmup)
                    entry[f"{backend}_ms" if backend != "spmm" else f"spmm{tile}_ms"] = round(s_ms, 4)
                    entry["dense_ms"] = round(min(d_ms, entry.get("dense_ms", d_ms)), 4)
                    if best is None or s_ms < best[0]:
                        best = (s_ms, candidate)
            assert best is not None  # torch-csr is always a candidate
            entry["speedup"] = round(entry["dense_ms"] / best[0], 4) if best[0] > 0 else None
            if entry["dense_ms"] >= min_speedup * best[0]:
                entry.update(packed=True, backend=best[1].backend, tile=best[1].tile)
                set_module(model, name, best[1])
            else:
                entry["skipped"] = "dense is as fast"
    return {"tokens": tokens, "min_speedup": min_speedup, "kernel": compile_error() or "compiled",
            "packed": sum(e["packed"] for e in report), "matrices": report}  # fmt: skip


def unpack_sparse(model: nn.Module) -> int:
    """Put plain linears back in place of every SparseLinear; returns how many."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    for name, module in found:
        set_module(model, name, module.to_linear())
    return len(found)
