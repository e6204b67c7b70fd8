"""Small modules that stand in for pruned structure.

They keep the attribute and parameter names of what they replace, so state-dict keys do not change,
and they work at zero width (a layer with every head or neuron removed).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class PrunedConv1D(Conv1D):
    """GPT-2's Conv1D that also runs with zero input features (the stock one reshapes with -1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if 0 in self.weight.shape:
            # no reshape through a zero-size dimension: ONNX Reshape reads a 0 in the target as "copy"
            return x.new_zeros(*lead, self.nf) + self.bias
        flat = x.reshape(math.prod(lead), x.shape[-1])
        return torch.addmm(self.bias, flat, self.weight).reshape(*lead, self.nf)


class ScatterLinear(nn.Linear):
    """A linear layer that computes only kept output dimensions and writes them into a zero vector of
    the full width, so the residual stream keeps the dimensions this sublayer no longer writes."""

    def __init__(self, in_features: int, kept: int, full: int, bias: bool = True) -> None:
        super().__init__(in_features, kept, bias=bias)
        self.full_features = full
        self.register_buffer("out_index", torch.arange(kept, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        out = y.new_zeros(*y.shape[:-1], self.full_features)
        return out.index_copy(-1, self.out_index, y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scattered_into={self.full_features}"


class ScatterConv1D(PrunedConv1D):
    """ScatterLinear for GPT-2's transposed Conv1D."""

    def __init__(self, in_features: int, kept: int, full: int) -> None:
        super().__init__(kept, in_features)
        self.full_features = full
        self.register_buffer("out_index", torch.arange(kept, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        out = y.new_zeros(*y.shape[:-1], self.full_features)
        return out.index_copy(-1, self.out_index, y)


class GatherLinear(nn.Linear):
    """A linear layer that reads only kept input dimensions (`in_index` into the full-width input): the hidden
    dimensions a sublayer no longer reads cost no multiply, while its input (the residual stream, or its norm)
    stays full width. The mirror of ScatterLinear, for the input side of q/k/v and the FFN input projections."""

    def __init__(self, kept: int, out_features: int, full: int, bias: bool = True) -> None:
        super().__init__(kept, out_features, bias=bias)
        self.full_in_features = full
        self.register_buffer("in_index", torch.arange(kept, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.index_select(-1, self.in_index))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gathered_from={self.full_in_features}"


class GatherConv1D(PrunedConv1D):
    """GatherLinear for GPT-2's transposed Conv1D (its weight is (kept inputs, out))."""

    def __init__(self, kept: int, out_features: int, full: int) -> None:
        super().__init__(out_features, kept)
        self.full_in_features = full
        self.register_buffer("in_index", torch.arange(kept, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.index_select(-1, self.in_index))


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class EmptyAttention(nn.Module):
    """Attention with every head removed: the sublayer's output is its output projection's bias.

    `out_name` keeps the projection under its original attribute name (state-dict keys unchanged);
    with no projection inside the core (BERT), it returns a zero-width context for the caller's one.
    """

    def __init__(self, out: nn.Module | None, out_name: str | None, tuple_len: int = 2) -> None:
        super().__init__()
        self.out_name = out_name
        self.tuple_len = tuple_len
        if out is not None and out_name is not None:
            self.add_module(out_name, out)

    def forward(self, *args, **kwargs):
        h = _hidden(args, kwargs)
        ctx = h.new_zeros(*h.shape[:-1], 0)
        y = getattr(self, self.out_name)(ctx) if self.out_name else ctx
        return (y, None)[: self.tuple_len]


class ZeroSublayer(nn.Module):
    """A skipped pre-LN sublayer: adds nothing to the residual."""

    def __init__(self, tuple_len: int = 0) -> None:
        super().__init__()
        self.tuple_len = tuple_len

    def forward(self, *args, **kwargs):
        z = torch.zeros_like(_hidden(args, kwargs))
        return (z, None)[: self.tuple_len] if self.tuple_len else z


class PassThrough(nn.Module):
    """A skipped post-LN sublayer (or its LayerNorm): returns one of its inputs unchanged."""

    def __init__(self, arg_index: int = 0, tuple_len: int = 0) -> None:
        super().__init__()
        self.arg_index = arg_index
        self.tuple_len = tuple_len

    def forward(self, *args, **kwargs):
        x = args[self.arg_index] if len(args) > self.arg_index else list(kwargs.values())[self.arg_index]
        return (x, None)[: self.tuple_len] if self.tuple_len else x
