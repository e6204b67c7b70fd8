"""One adapter per architecture family: the only place that names model-specific attributes.

Each `Family` entry declares its module names, its config keys, the model classes and model types it covers,
how its positions are numbered, and hooks (MPNet's shared relative-position bias, the config fields that
describe compacted shapes). Other modules ask through the functions below and name no family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.topology.base import AttentionSpec, BlockSpec, FFNSpec, Topology, linear_shape
from prunekit.topology.modules import EmptyAttention, PassThrough, ZeroSublayer


@dataclass(frozen=True)
class ConfigKeys:
    """The Hugging Face config fields that hold a family's shapes."""

    ffn_width: str
    heads: str
    layers: str
    positions: str  # the longest input the position embeddings were built for
    kv_heads: str | None = None  # grouped-query attention
    head_dim: str | None = None  # a head size independent of hidden/heads: compacted head counts fit the config


def _mpnet_position_bias(core: nn.Module, kept: torch.Tensor, permutation: bool = False) -> None:
    """MPNet adds one relative-position bias per head, computed once for all layers: select our heads.

    The index composes with any earlier one. `permutation`: `kept` reorders all the layer's heads (NAS
    reordering), and an index that comes back to the identity is dropped, so no buffer is left behind."""
    kept = kept.to(next(core.parameters()).device)
    old = getattr(core, "kept_heads", None)
    core.register_buffer("kept_heads", old[kept] if old is not None else kept.clone())
    if getattr(core, "_prunekit_hook", None) is None:

        def hook(module, args, kwargs):
            if len(args) > 2 and args[2] is not None:
                args = (*args[:2], args[2].index_select(1, module.kept_heads), *args[3:])
            elif kwargs.get("position_bias") is not None:
                kwargs["position_bias"] = kwargs["position_bias"].index_select(1, module.kept_heads)
            return args, kwargs

        core._prunekit_hook = core.register_forward_pre_hook(hook, with_kwargs=True)
    if permutation and torch.equal(core.kept_heads.cpu(), torch.arange(core.kept_heads.numel())):
        core._prunekit_hook.remove()
        core._prunekit_hook = None
        del core._buffers["kept_heads"]


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
    config_keys: ConfigKeys
    # model class names this family loads (a manifest's class is refused unless it starts with one)
    class_prefixes: tuple[str, ...]
    fused_qkv: bool = False
    # hidden states are the unnormalised residual stream (LayerNorm before each sublayer), not unit-scale outputs
    pre_norm: bool = False
    decoder: bool = False  # causal LM: every head runs on every token
    learned_positions: bool = True  # False: rotary, no hard input length
    # model types among `model_types` whose position ids start at padding_idx + 1 (fairseq / RoBERTa style)
    padded_positions: tuple[str, ...] = ()
    # dotted-name segments of the embedding parameters (counted apart from the blocks and the head)
    embedding_segments: tuple[str, ...] = ("embeddings",)
    # called with (attention core, kept or reordered query-head index, permutation) whenever heads are removed
    # or reordered: for state outside the layer that is per head (MPNet's shared relative-position bias)
    on_heads_kept: Callable[[nn.Module, torch.Tensor, bool], None] | None = None

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

    def heads_kept(self, core: nn.Module, kept: torch.Tensor, permutation: bool = False) -> None:
        """Tell the family's hook (if any) which query heads a layer kept, or how it reordered them."""
        if self.on_heads_kept is not None:
            self.on_heads_kept(core, kept, permutation)

    def config_update(
        self, ffn_width: int | None, heads: tuple[int, int] | None, head_dim: int | None
    ) -> dict[str, int]:
        """Config fields for shapes every block shares (None: the blocks differ); head counts only where the
        config can express them (a head size of its own, as Llama-like configs have)."""
        keys = self.config_keys
        update: dict[str, int] = {}
        if ffn_width is not None:
            update[keys.ffn_width] = ffn_width
        if heads is not None and keys.head_dim is not None and head_dim is not None:
            update[keys.heads] = heads[0]
            if keys.kv_heads is not None:
                update[keys.kv_heads] = heads[1]
            update[keys.head_dim] = head_dim
        return update


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

_BERT_KEYS = ConfigKeys(
    ffn_width="intermediate_size",
    heads="num_attention_heads",
    layers="num_hidden_layers",
    positions="max_position_embeddings",
)

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
        config_keys=_BERT_KEYS,
        class_prefixes=("Bert", "Roberta", "XLMRoberta", "Camembert", "Electra"),
        padded_positions=("roberta", "xlm-roberta", "camembert"),
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
        config_keys=_BERT_KEYS,
        class_prefixes=("MPNet",),
        padded_positions=("mpnet",),
        embedding_segments=("embeddings", "relative_attention_bias"),
        on_heads_kept=_mpnet_position_bias,
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
        config_keys=ConfigKeys(
            ffn_width="hidden_dim", heads="n_heads", layers="n_layers", positions="max_position_embeddings"
        ),
        class_prefixes=("DistilBert",),
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
        config_keys=ConfigKeys(
            ffn_width="intermediate_size",
            heads="num_attention_heads",
            layers="num_hidden_layers",
            positions="max_position_embeddings",
            kv_heads="num_key_value_heads",
            head_dim="head_dim",
        ),
        class_prefixes=("Llama", "Mistral", "Qwen2"),
        pre_norm=True,
        decoder=True,
        learned_positions=False,
        embedding_segments=("embed_tokens",),
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
        config_keys=ConfigKeys(ffn_width="n_inner", heads="n_head", layers="n_layer", positions="n_positions"),
        class_prefixes=("GPT2",),
        fused_qkv=True,
        pre_norm=True,
        decoder=True,
        embedding_segments=("wte", "wpe"),
    ),
)

SUPPORTED_MODEL_TYPES = sorted({t for f in FAMILIES for t in f.model_types})


# model types prunekit does not prune that also number positions from padding_idx + 1: their configs can reach
# the input-length checks (`position_offset`) before the family check refuses the model
_OTHER_PADDED_POSITIONS = (
    "xlm-roberta-xl", "longformer", "data2vec-text", "ibert", "roberta-prelayernorm", "luke", "markuplm", "xmod",
)  # fmt: skip
_PADDED_POSITIONS = frozenset(t for f in FAMILIES for t in f.padded_positions) | frozenset(_OTHER_PADDED_POSITIONS)
_POSITION_KEYS = tuple(dict.fromkeys(f.config_keys.positions for f in FAMILIES))


def family_of(model: nn.Module) -> Family:
    return family_of_config(getattr(model, "config", None))


def family_of_config(config) -> Family:
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UsageError(
        f"unsupported architecture '{model_type}': prunekit supports {', '.join(SUPPORTED_MODEL_TYPES)}; "
        "pick a model of one of these families"
    )


# ---- what the rest of the package asks of a family (it names no family and no model-specific attribute)


def supported_class_prefixes() -> list[str]:
    """Model class names prunekit loads from a manifest start with one of these."""
    return [p for f in FAMILIES for p in f.class_prefixes]


def embedding_segments() -> frozenset[str]:
    """Dotted-name segments that mark a parameter as part of the embeddings, in any family."""
    return frozenset(seg for f in FAMILIES for seg in f.embedding_segments)


def is_decoder(model: nn.Module) -> bool:
    """A causal LM family: its heads run on every token."""
    return family_of(model).decoder


def learned_positions(model: nn.Module) -> bool:
    """Whether the family's positions are learned embeddings of a fixed count (False: rotary)."""
    return family_of(model).learned_positions


def ffn_width_key(config) -> str:
    """The config field holding the FFN width."""
    return family_of_config(config).config_keys.ffn_width


def layers_key(config) -> str:
    """The config field holding the number of blocks."""
    return family_of_config(config).config_keys.layers


def config_heads(config) -> int:
    """Query heads per layer as the config records them."""
    return getattr(config, family_of_config(config).config_keys.heads)


def heads_in_config(config) -> bool:
    """Whether the config can record compacted head counts (a head size of its own, not hidden / heads)."""
    return family_of_config(config).config_keys.head_dim is not None


def max_positions(config) -> int | None:
    """The number of position embeddings the config records (a positive int), or None; any model type."""
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def position_offset(config) -> int:
    """Position slots before the first token: padding_idx + 1 where position ids start there (RoBERTa-style
    numbering, fairseq's), else 0; any model type."""
    if getattr(config, "model_type", None) not in _PADDED_POSITIONS:
        return 0
    pad = getattr(config, "pad_token_id", None)
    return pad + 1 if isinstance(pad, int) and pad >= 0 else 0


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
