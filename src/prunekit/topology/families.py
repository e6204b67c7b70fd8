"""One adapter per architecture family: the only place that names model-specific attributes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.compact.modules import EmptyAttention, PassThrough, ZeroSublayer
from prunekit.core.errors import UsageError
from prunekit.topology.base import AttentionSpec, BlockSpec, FFNSpec, Topology, linear_shape


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers_suffix: str  # ModuleList holding the blocks, relative to the base model
    q: str
    k: str
    v: str
    o: str
    core: str  # module holding head-count attributes (relative to the block)
    ffn_inputs: tuple[str, ...]
    ffn_output: str
    # how a compacted layer with no head left looks: (module replaced, its projection's name or None, tuple length)
    empty_core: tuple[str, str | None, int]
    # what replaces the sublayer (and its LayerNorm, post-LN) when it is dropped whole
    skip_attention: tuple[tuple[str, Callable[[], nn.Module]], ...]
    skip_ffn: tuple[tuple[str, Callable[[], nn.Module]], ...]
    head_attrs: Callable[[nn.Module, int, int, int], None]
    fused_qkv: bool = False
    # hidden states are the unnormalised residual stream (LayerNorm before each sublayer), not unit-scale outputs
    pre_norm: bool = False

    def heads(self, core: nn.Module, config) -> tuple[int, int, int]:
        """(heads, kv heads, head size) read from the module itself, so a compacted block reads right."""
        if self.name == "llama":
            dh = core.head_dim
            q = linear_shape(core.q_proj)[0] // dh
            kv = linear_shape(core.k_proj)[0] // dh
            return q, kv, dh
        if self.name == "gpt2":
            return core.num_heads, core.num_heads, core.head_dim
        if self.name == "distilbert":
            return core.n_heads, core.n_heads, core.attention_head_size
        return core.num_attention_heads, core.num_attention_heads, core.attention_head_size


def _bert_heads(core: nn.Module, h: int, kv: int, dh: int) -> None:
    core.num_attention_heads = h
    core.all_head_size = h * dh


def _distil_heads(core: nn.Module, h: int, kv: int, dh: int) -> None:
    core.n_heads = h


def _llama_heads(core: nn.Module, h: int, kv: int, dh: int) -> None:
    core.num_key_value_groups = h // kv if kv else 1


def _gpt2_heads(core: nn.Module, h: int, kv: int, dh: int) -> None:
    core.num_heads = h
    core.split_size = h * dh


_POST_LN_FFN_SKIP = (("intermediate", PassThrough), ("output", lambda: PassThrough(arg_index=1)))

FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        layers_suffix="encoder.layer",
        q="attention.self.query",
        k="attention.self.key",
        v="attention.self.value",
        o="attention.output.dense",
        core="attention.self",
        ffn_inputs=("intermediate.dense",),
        ffn_output="output.dense",
        empty_core=("attention.self", None, 2),
        skip_attention=(("attention", lambda: PassThrough(tuple_len=2)),),
        skip_ffn=_POST_LN_FFN_SKIP,
        head_attrs=_bert_heads,
    ),
    Family(
        name="mpnet",
        model_types=("mpnet",),
        layers_suffix="encoder.layer",
        q="attention.attn.q",
        k="attention.attn.k",
        v="attention.attn.v",
        o="attention.attn.o",
        core="attention.attn",
        ffn_inputs=("intermediate.dense",),
        ffn_output="output.dense",
        empty_core=("attention.attn", "o", 1),
        skip_attention=(("attention", lambda: PassThrough(tuple_len=1)),),
        skip_ffn=_POST_LN_FFN_SKIP,
        head_attrs=_bert_heads,
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        layers_suffix="transformer.layer",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        o="attention.out_lin",
        core="attention",
        ffn_inputs=("ffn.lin1",),
        ffn_output="ffn.lin2",
        empty_core=("attention", "out_lin", 2),
        skip_attention=(("attention", lambda: ZeroSublayer(2)), ("sa_layer_norm", PassThrough)),
        skip_ffn=(("ffn", ZeroSublayer), ("output_layer_norm", PassThrough)),
        head_attrs=_distil_heads,
    ),
    Family(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "smollm3"),
        layers_suffix="layers",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.o_proj",
        core="self_attn",
        ffn_inputs=("mlp.gate_proj", "mlp.up_proj"),
        ffn_output="mlp.down_proj",
        empty_core=("self_attn", "o_proj", 2),
        skip_attention=(("self_attn", lambda: ZeroSublayer(2)), ("input_layernorm", PassThrough)),
        skip_ffn=(("mlp", ZeroSublayer), ("post_attention_layernorm", PassThrough)),
        head_attrs=_llama_heads,
        pre_norm=True,
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        layers_suffix="h",
        q="attn.c_attn",
        k="attn.c_attn",
        v="attn.c_attn",
        o="attn.c_proj",
        core="attn",
        ffn_inputs=("mlp.c_fc",),
        ffn_output="mlp.c_proj",
        empty_core=("attn", "c_proj", 2),
        skip_attention=(("attn", lambda: ZeroSublayer(2)), ("ln_1", PassThrough)),
        skip_ffn=(("mlp", ZeroSublayer), ("ln_2", PassThrough)),
        head_attrs=_gpt2_heads,
        fused_qkv=True,
        pre_norm=True,
    ),
)

SUPPORTED_MODEL_TYPES = sorted({t for f in FAMILIES for t in f.model_types})


def family_of(model: nn.Module) -> Family:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UsageError(
        f"unsupported architecture '{model_type}': prunekit supports {', '.join(SUPPORTED_MODEL_TYPES)}; "
        "pick a model of one of these families"
    )


def _find_layers(model: nn.Module, fam: Family) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == fam.layers_suffix or name.endswith("." + fam.layers_suffix)):
            return name
    raise UsageError(f"no '{fam.layers_suffix}' block list found in this {fam.name} model")


def describe(model: nn.Module) -> Topology:
    """Map a Hugging Face model to its prunable structure; reads current (possibly compacted) shapes."""
    fam = family_of(model)
    layers_path = _find_layers(model, fam)
    layers = model.get_submodule(layers_path)
    blocks = []
    for i, block in enumerate(layers):
        name = f"{layers_path}.{i}"
        attn, ffn = None, None
        if not is_skipped(block, fam.skip_attention):
            core = block.get_submodule(fam.core)
            h, kv, dh = (0, 0, 0) if isinstance(core, EmptyAttention) else fam.heads(core, model.config)
            attn = _attention_spec(fam, name, h, kv, dh)
        if not is_skipped(block, fam.skip_ffn):
            width = linear_shape(block.get_submodule(fam.ffn_inputs[0]))[0]
            ffn = FFNSpec([f"{name}.{m}" for m in fam.ffn_inputs], f"{name}.{fam.ffn_output}", width)
        blocks.append(BlockSpec(index=i, name=name, attention=attn, ffn=ffn))
    return Topology(
        family=fam.name,
        model_type=model.config.model_type,
        hidden_size=int(getattr(model.config, "hidden_size", None) or model.config.dim),
        blocks=blocks,
        layers_path=layers_path,
        pre_norm=fam.pre_norm,
    )


def is_skipped(block: nn.Module, skip: tuple) -> bool:
    return isinstance(getattr(block, skip[0][0]), (PassThrough, ZeroSublayer))


def _attention_spec(fam: Family, name: str, h: int, kv: int, dh: int) -> AttentionSpec:
    return AttentionSpec(
        q=f"{name}.{fam.q}",
        k=f"{name}.{fam.k}",
        v=f"{name}.{fam.v}",
        o=f"{name}.{fam.o}",
        core=f"{name}.{fam.core}",
        num_heads=h,
        num_kv_heads=kv,
        head_dim=dh,
        fused_qkv=fam.fused_qkv,
    )


def head_feature_index(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature indices owned by the given heads within one projection."""
    return (heads.long()[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
