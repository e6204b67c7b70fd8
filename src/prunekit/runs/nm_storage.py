"""Compressed storage for N:M-sparse weights: kept values plus their positions, so a 2:4 model saves disk too.

An N:M-sparse (out, in) weight is stored as `values` (out, in/M*N) and `indices` uint8 (out, in/M*N), the
position (0..M-1) of each kept value within its group of M inputs, in ascending order. fp32 2:4 takes 5/8 of
the dense bytes, fp16/bf16 3/4. A trailing partial group (pad_tail) is stored dense. Everything else of the
state dict is stored as is, so `load_nm_compressed` rebuilds the identical model (torch.equal on every
tensor). The file is plain safetensors; the packing layout rides in its string metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from prunekit.core.errors import PrunekitError, UsageError
from prunekit.core.files import load_state_strict
from prunekit.patterns import is_nm, parse_pattern
from prunekit.topology import get_module
from prunekit.topology.base import is_conv1d

NM_WEIGHTS = "model.nm.safetensors"
_META_KEY = "prunekit_nm"


def pack_nm(weight: torch.Tensor, n: int, m: int) -> dict[str, torch.Tensor]:
    """Values and in-group positions of an N:M-sparse (out, in) weight (in % M == 0). Groups with fewer than N
    non-zeros store some zeros; a group with more than N non-zeros is not N:M and is refused."""
    out_f, in_f = weight.shape
    if in_f % m or not 0 < n < m or m > 256:
        raise UsageError(f"cannot pack {n}:{m} into a weight with {in_f} inputs: need 0 < N < M <= 256, M | inputs")
    groups = weight.reshape(out_f, in_f // m, m)
    nonzero = groups != 0
    if not is_nm(weight, n, m):
        raise UsageError(f"weight is not {n}:{m} sparse: some group of {m} inputs has more than {n} non-zeros")
    # non-zeros first, then the lowest positions: a stable, deterministic choice of N slots per group
    order = torch.sort((~nonzero).to(torch.uint8), dim=-1, stable=True).indices[..., :n]
    idx = order.sort(dim=-1).values
    values = groups.gather(-1, idx)
    return {
        "values": values.reshape(out_f, -1).contiguous(),
        "indices": idx.to(torch.uint8).reshape(out_f, -1).contiguous(),
    }


def unpack_nm(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The dense (out, in) weight back from `pack_nm`'s output (exact inverse on N:M-sparse weights)."""
    out_f, kept = values.shape
    groups = kept // n
    dense = torch.zeros(out_f, groups, m, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, indices.reshape(out_f, groups, n).long(), values.reshape(out_f, groups, n))
    return dense.reshape(out_f, groups * m)


def _nm_of(pattern: str) -> tuple[int, int] | None:
    p = parse_pattern(pattern)
    return (p.n, p.m) if p.kind == "nm" else None


def compress_state(model: nn.Module, patterns: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The model's state dict with each N:M module's weight replaced by its packed tensors, and the layout.
    A module named N:M whose weight is not (any more) N:M-sparse is kept dense: storage never changes values."""
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        ptr = (v.device, v.data_ptr(), tuple(v.shape))
        if ptr in seen:  # tied to an earlier key (e.g. the LM head to the embeddings): stored once
            continue
        seen.add(ptr)
        state[k] = v.detach().cpu().contiguous().clone()
    layout: dict[str, dict] = {}
    for name, pattern in patterns.items():
        nm = _nm_of(pattern)
        key = f"{name}.weight"
        if nm is None or key not in state:
            continue
        module = get_module(model, name)
        transposed = is_conv1d(module)
        w = state.pop(key)
        w = w.T if transposed else w
        n, m = nm
        body = w.shape[1] - w.shape[1] % m
        if not is_nm(w[:, :body], n, m):  # no longer N:M (e.g. trained densely since): stored as it is
            state[key] = w.T.contiguous() if transposed else w
            continue
        packed = pack_nm(w[:, :body], n, m)
        state[f"{key}.nm_values"], state[f"{key}.nm_indices"] = packed["values"], packed["indices"]
        if body < w.shape[1]:
            state[f"{key}.nm_tail"] = w[:, body:].contiguous()
        layout[key] = {"n": n, "m": m, "shape": list(w.shape), "transposed": transposed}
    return state, layout


def decompress_state(state: dict[str, torch.Tensor], layout: dict[str, dict]) -> dict[str, torch.Tensor]:
    state = dict(state)
    for key, info in layout.items():
        n, m = int(info["n"]), int(info["m"])
        w = unpack_nm(state.pop(f"{key}.nm_values"), state.pop(f"{key}.nm_indices"), n, m)
        tail = state.pop(f"{key}.nm_tail", None)
        if tail is not None:
            w = torch.cat([w, tail], dim=1)
        if list(w.shape) != list(info["shape"]):
            raise PrunekitError(f"packed '{key}' unpacks to {tuple(w.shape)}, the layout says {info['shape']}")
        state[key] = (w.T if info["transposed"] else w).contiguous()
    return state


def save_nm_compressed(model: nn.Module, path: str | Path, patterns: dict[str, str]) -> Path:
    """Write the model to one safetensors file with its N:M modules (per `patterns`, e.g. MaskSet.patterns)
    packed. Tied weights are stored once; loading re-ties them."""
    state, layout = compress_state(model, patterns)
    path = Path(path)
    save_file(state, str(path), metadata={_META_KEY: json.dumps(layout)})
    return path


def read_nm_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The packed tensors and the layout of a `save_nm_compressed` file."""
    with safe_open(str(path), framework="pt") as fh:
        layout = json.loads((fh.metadata() or {}).get(_META_KEY, "{}"))
    return load_file(str(path)), layout


def has_nm(patterns: dict[str, str] | None) -> bool:
    """Whether any module of a manifest's pattern map is N:M, i.e. whether compressed storage can save disk."""
    return any(_nm_of(p) is not None for p in (patterns or {}).values())


def load_nm_compressed(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a `save_nm_compressed` file into `model` (strict: every key must match), in place."""
    path = Path(path)
    try:
        state = decompress_state(*read_nm_file(path))
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise PrunekitError(f"{path} is corrupt or truncated ({exc}); restore it or re-run the job") from exc
    return load_state_strict(model, state, f"{path} does not match the model", "give the model it was saved from")
