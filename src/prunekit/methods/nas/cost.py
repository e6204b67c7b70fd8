"""What a sub-network costs, without building it: parameters and FLOPs per token from the masks.

Both equal `prunekit.bench.count_parameters(...)["total"]` and `flops_per_token(...)["total"]` of the compacted
sub-network (tested), so candidates of the search and baselines built by compaction are measured alike.
Dropped sublayers lose every parameter of the modules compaction swaps out (their LayerNorm too); removed heads
lose their Q/K/V rows (a KV head only with its last query head) and output-projection columns; removed neurons
their input rows and output column. Output-projection biases stay (compaction keeps them).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunekit.bench import count_parameters, flops_per_token
from prunekit.compact.remove import compact
from prunekit.masks import MaskSet, kv_heads_kept
from prunekit.topology import Topology, describe, family_of, get_module, linear_shape


def _has_bias(module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None


def _removed(model: nn.Module, topo: Topology, masks: MaskSet, seq_len: int) -> tuple[int, float]:
    """(parameters, FLOPs per token) the masks remove from the model as it is."""
    fam = family_of(model)
    params, flops = 0, 0.0
    for i, lm in masks.layers.items():
        b = topo.blocks[i]
        block = get_module(model, b.name)
        a, f = b.attention, b.ffn
        if a is not None and lm.drop_attention:
            params += sum(p.numel() for rel, _ in fam.skip_attention for p in block.get_submodule(rel).parameters())
            flops += sum(2 * o * n for o, n in (linear_shape(get_module(model, x)) for x in a.linears()))
            flops += a.num_heads * 4 * seq_len * a.head_dim
        elif a is not None and a.num_heads and lm.heads is not None:
            heads = lm.heads.bool().cpu()
            gone_q = int((~heads).sum())
            gone_kv = int((~kv_heads_kept(heads, a.num_kv_heads)).sum())
            dh = a.head_dim
            q = get_module(model, a.q)
            d_in = linear_shape(q)[1]
            rows = (gone_q + 2 * gone_kv) * dh
            if a.fused_qkv:
                params += rows * (d_in + int(_has_bias(q)))
            else:
                for name, n in ((a.q, gone_q), (a.k, gone_kv), (a.v, gone_kv)):
                    params += n * dh * (d_in + int(_has_bias(get_module(model, name))))
            o_out = linear_shape(get_module(model, a.o))[0]
            params += o_out * gone_q * dh
            flops += 2 * rows * d_in + 2 * o_out * gone_q * dh + gone_q * 4 * seq_len * dh
        if f is not None and lm.drop_ffn:
            params += sum(p.numel() for rel, _ in fam.skip_ffn for p in block.get_submodule(rel).parameters())
            flops += sum(2 * o * n for o, n in (linear_shape(get_module(model, x)) for x in f.linears()))
        elif f is not None and lm.neurons is not None:
            gone = int((~lm.neurons.bool()).sum())
            for name in f.inputs:
                m = get_module(model, name)
                params += gone * (linear_shape(m)[1] + int(_has_bias(m)))
                flops += 2 * gone * linear_shape(m)[1]
            out = linear_shape(get_module(model, f.output))[0]
            params += out * gone
            flops += 2 * out * gone
    return params, flops


def subnet_parameters(model: nn.Module, masks: MaskSet, topo: Topology | None = None) -> int:
    """All parameters of the compacted sub-network (embeddings and head included, tied weights once)."""
    topo = topo or describe(model)
    return int(count_parameters(model, topo)["total"]) - _removed(model, topo, masks, 1)[0]


def subnet_block_parameters(model: nn.Module, masks: MaskSet, topo: Topology | None = None) -> int:
    """Parameters of the compacted sub-network's transformer blocks (the part a structural search can shrink)."""
    topo = topo or describe(model)
    return int(count_parameters(model, topo)["blocks"]) - _removed(model, topo, masks, 1)[0]


def subnet_flops(model: nn.Module, masks: MaskSet, seq_len: int, topo: Topology | None = None) -> float:
    """Forward FLOPs per token of the compacted sub-network at `seq_len` (prunekit.bench's convention)."""
    topo = topo or describe(model)
    return float(flops_per_token(model, seq_len, topo)["total"]) - _removed(model, topo, masks, seq_len)[1]


@torch.no_grad()
def compacted_copy(model: nn.Module, masks: MaskSet) -> nn.Module:
    """The sub-network as a physically smaller model (the super-network is left untouched)."""
    return compact(copy.deepcopy(model), masks).eval()
