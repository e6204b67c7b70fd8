"""What is prunable in a transformer, independent of how a family names its modules.

Modules are referenced by dotted name, not by object, so a description stays valid while
compaction replaces modules, and so it can be written into a manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunekit.core.errors import UsageError


def is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


def weight_view(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), whatever the storage order (GPT-2's Conv1D is transposed)."""
    return module.weight.T if is_conv1d(module) else module.weight


def linear_shape(module: nn.Module) -> tuple[int, int]:
    out, inp = weight_view(module).shape
    return int(out), int(inp)


@dataclass
class AttentionSpec:
    """One self-attention sublayer. Head i owns output features i*dh:(i+1)*dh of q (k, v for KV head i)
    and input features i*dh:(i+1)*dh of o. For GPT-2, q, k and v are one fused module."""

    q: str
    k: str
    v: str
    o: str
    core: str  # module whose attributes hold the head counts
    num_heads: int
    num_kv_heads: int
    head_dim: int
    fused_qkv: bool = False

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else 0

    def linears(self) -> list[str]:
        if self.num_heads == 0:  # every head removed: only the output projection (its bias) is left
            return [self.o]
        names = [self.q] if self.fused_qkv else [self.q, self.k, self.v]
        return [*names, self.o]


@dataclass
class FFNSpec:
    """One feed-forward sublayer: neuron j owns output feature j of every input module (W1, or gate and
    up) and input feature j of the output module (W2)."""

    inputs: list[str]
    output: str
    width: int

    def linears(self) -> list[str]:
        return [*self.inputs, self.output]


@dataclass
class BlockSpec:
    index: int
    name: str
    attention: AttentionSpec | None
    ffn: FFNSpec | None

    def linears(self) -> list[str]:
        out: list[str] = []
        if self.attention is not None:
            out += self.attention.linears()
        if self.ffn is not None:
            out += self.ffn.linears()
        return out


@dataclass
class Topology:
    family: str
    model_type: str
    hidden_size: int
    blocks: list[BlockSpec]
    layers_path: str  # dotted name of the ModuleList of blocks
    pre_norm: bool = False  # hidden states are the unnormalised residual stream (Llama, GPT-2)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def prunable_linears(self) -> list[str]:
        return [n for b in self.blocks for n in b.linears()]


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise UsageError(f"module '{name}' not found in the model") from exc


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
