"""2:4 deployment: sparse tensor cores where the GPU has them, and an honest note where it does not.

Only NVIDIA GPUs of compute capability 8.0+ (Ampere on) multiply 2:4 weights faster than dense, through
`torch.sparse.to_sparse_semi_structured` in fp16/bf16. Elsewhere a 2:4 model runs dense with zeros, and
reports must say so instead of implying a speedup. Whether a given linear shape gains is measured, never
assumed (small matrices often do not): `benchmark_semi_structured` times each shape sparse vs dense.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.patterns import is_nm
from prunekit.topology import get_module

NO_SPEEDUP = (
    "N:M sparsity gives no speedup on this device (needs a CUDA GPU with compute capability 8.0+); "
    "the model runs dense with zeros"
)


def semi_structured_available(device: str | torch.device | None = None) -> bool:
    """True on a CUDA device of compute capability >= 8.0 with a torch that has semi-structured sparsity."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False
    return torch.cuda.get_device_capability(dev) >= (8, 0)


def nm_speedup_note(device: str | torch.device | None = None) -> str:
    """The sentence a report prints about N:M speed on `device`."""
    if not semi_structured_available(device):
        return NO_SPEEDUP
    return (
        "2:4 linears can run on sparse tensor cores on this device (fp16/bf16); "
        "whether each shape is faster than dense is measured per shape"
    )


def _is_2_4(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and is_nm(weight, 2, 4)


def _two_four_linears(model: nn.Module, patterns: dict[str, str]) -> list[str]:
    """nn.Linear modules whose pattern is 2:4 (GPT-2's Conv1D stores W transposed: the groups run the wrong
    way for the kernel, so it stays dense)."""
    return [n for n, p in patterns.items() if p == "2:4" and isinstance(get_module(model, n), nn.Linear)]


@torch.no_grad()
def to_semi_structured(
    model: nn.Module, patterns: dict[str, str], dtype: torch.dtype = torch.float16, only: set[str] | None = None
) -> list[str]:
    """Convert the 2:4 linears (all, or those in `only`) to semi-structured sparse weights in place; the model
    must already be on the CUDA device. Returns the converted names; a shape the kernel refuses stays dense."""
    if not semi_structured_available(next(model.parameters()).device):
        raise UsageError(NO_SPEEDUP)
    from torch.sparse import to_sparse_semi_structured

    if dtype not in (torch.float16, torch.bfloat16):
        raise UsageError(f"semi-structured sparsity needs fp16 or bf16 weights, not {dtype}")
    converted = []
    for name in _two_four_linears(model, patterns):
        if only is not None and name not in only:
            continue
        module = get_module(model, name)
        w = module.weight.detach().to(dtype)
        if not _is_2_4(w):
            raise UsageError(f"module '{name}' is not 2:4 sparse: apply the masks before converting")
        try:
            sparse = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError):  # shape constraints of the kernel (rows/cols multiples of 32/64)
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        converted.append(name)
    return converted


def _time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def benchmark_semi_structured(
    model: nn.Module,
    patterns: dict[str, str],
    tokens: int = 4096,
    dtype: torch.dtype = torch.float16,
    repeats: int = 20,
    device: str | torch.device = "cuda",
) -> list[dict[str, Any]]:
    """Per distinct 2:4 linear shape: median ms of F.linear dense vs semi-structured at `tokens` rows of input,
    with the speedup and the modules of that shape. Random 2:4 weights of the shape (the kernel's speed does
    not depend on the values). Needs a CUDA GPU of capability 8.0+."""
    if not semi_structured_available(device):
        raise UsageError(NO_SPEEDUP)
    from torch.sparse import to_sparse_semi_structured

    shapes: dict[tuple[int, int], list[str]] = {}
    for name in _two_four_linears(model, patterns):
        w = get_module(model, name).weight
        shapes.setdefault((int(w.shape[0]), int(w.shape[1])), []).append(name)
    rows = []
    for (out_f, in_f), names in shapes.items():
        w = torch.randn(out_f, in_f, device=device, dtype=dtype)
        keep = torch.tensor([1, 1, 0, 0], device=device, dtype=dtype).repeat(out_f, in_f // 4)
        w = w * keep
        x = torch.randn(tokens, in_f, device=device, dtype=dtype)
        row: dict[str, Any] = {"shape": [out_f, in_f], "modules": names, "tokens": tokens}
        row["dense_ms"] = _time(lambda w=w, x=x: F.linear(x, w), repeats)
        try:
            ws = to_sparse_semi_structured(w)
            row["sparse_ms"] = _time(lambda ws=ws, x=x: F.linear(x, ws), repeats)
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
        except (RuntimeError, ValueError) as exc:
            row["sparse_ms"], row["speedup"], row["error"] = None, None, str(exc).splitlines()[0]
        rows.append(row)
    return rows
