"""Per-layer shapes of a (possibly compacted) model: written into the manifest, read back to rebuild.

A Hugging Face config describes one shape for all layers; a pruned model often has a different shape
per layer. The manifest records each layer, and `rebuild` gives a freshly built model the same
module shapes so its weights load strictly.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.masks import LayerMask, MaskSet
from prunekit.topology import config_heads, describe, family_of, get_module, heads_in_config
from prunekit.topology.families import is_skipped
from prunekit.topology.modules import EmptyAttention


def _rows_kept(module: nn.Module) -> int | None:
    index = getattr(module, "out_index", None)
    return int(index.numel()) if index is not None else None


def _cols_kept(module: nn.Module) -> int | None:
    """Hidden dimensions a gathering input projection reads (None: it reads all)."""
    index = getattr(module, "in_index", None)
    return int(index.numel()) if index is not None else None


def structure(model: nn.Module) -> list[dict]:
    topo = describe(model)
    fam = family_of(model)
    layers = []
    for b in topo.blocks:
        block = get_module(model, b.name)
        entry: dict = {"layer": b.index}
        if b.attention is None:
            entry.update(attention="dropped", heads=0, kv_heads=0)
        else:
            a = b.attention
            empty = isinstance(get_module(model, a.core), EmptyAttention)
            entry.update(
                attention="empty" if empty else "kept",
                heads=a.num_heads,
                kv_heads=a.num_kv_heads,
                attn_rows=_rows_kept(get_module(model, a.o)),
                attn_cols=_cols_kept(get_module(model, a.q)) if a.num_heads else None,
            )
        if b.ffn is None or is_skipped(block, fam.skip_ffn):
            entry.update(ffn="dropped", ffn_width=0)
        else:
            entry.update(
                ffn="kept",
                ffn_width=b.ffn.width,
                ffn_rows=_rows_kept(get_module(model, b.ffn.output)),
                ffn_cols=_cols_kept(get_module(model, b.ffn.inputs[0])),
            )
        layers.append(entry)
    return layers


def _prefix(n: int, k: int) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[:k] = True
    return m


def structure_masks(model: nn.Module, layers: list[dict]) -> MaskSet:
    """Masks that give a dense model the recorded shapes (which units does not matter: weights follow)."""
    topo = describe(model)
    if len(layers) != topo.num_layers:
        raise ValueError(f"manifest describes {len(layers)} layers, the model config has {topo.num_layers}")
    masks = MaskSet()
    d = topo.hidden_size
    for entry, b in zip(layers, topo.blocks, strict=True):
        lm = LayerMask()
        a = b.attention
        if entry["attention"] == "dropped":
            lm.drop_attention = True
        elif a is not None:
            group = a.num_heads // a.num_kv_heads
            kv, h = entry["kv_heads"], entry["heads"]
            per = h // kv if kv else 0
            lm.heads = torch.stack(
                [_prefix(group, per) if g < kv else _prefix(group, 0) for g in range(a.num_kv_heads)]
            ).flatten()
            if entry.get("attn_rows") is not None:
                lm.attn_rows = _prefix(d, entry["attn_rows"])
            if entry.get("attn_cols") is not None:
                lm.attn_cols = _prefix(d, entry["attn_cols"])
        if entry["ffn"] == "dropped":
            lm.drop_ffn = True
        elif b.ffn is not None:
            lm.neurons = _prefix(b.ffn.width, entry["ffn_width"])
            if entry.get("ffn_rows") is not None:
                lm.ffn_rows = _prefix(d, entry["ffn_rows"])
            if entry.get("ffn_cols") is not None:
                lm.ffn_cols = _prefix(d, entry["ffn_cols"])
        masks.layers[b.index] = lm
    return masks


def uniform_config_update(model: nn.Module) -> dict:
    """Config fields that describe the compacted shapes, when every block has the same shape."""
    layers = structure(model)
    widths = {e["ffn_width"] for e in layers if e["ffn"] == "kept"}
    heads = {(e["heads"], e["kv_heads"]) for e in layers if e["attention"] == "kept"}
    head_dim = None
    if len(heads) == 1 and heads_in_config(model.config):
        head_dim = next(b.attention.head_dim for b in describe(model).blocks if b.attention and b.attention.num_heads)
    return family_of(model).config_update(
        ffn_width=widths.pop() if len(widths) == 1 else None,
        heads=heads.pop() if len(heads) == 1 else None,
        head_dim=head_dim,
    )


def plain_loadable(model: nn.Module) -> bool:
    """Whether `AutoModel*.from_pretrained` alone rebuilds these shapes (config fields say it all)."""
    layers = structure(model)
    cfg = model.config
    if any(
        e["attention"] != "kept"
        or e["ffn"] != "kept"
        or e.get("attn_rows") is not None
        or e.get("ffn_rows") is not None
        or e.get("attn_cols") is not None
        or e.get("ffn_cols") is not None
        for e in layers
    ):
        return False
    if len({e["ffn_width"] for e in layers}) != 1 or len({(e["heads"], e["kv_heads"]) for e in layers}) != 1:
        return False
    return heads_in_config(cfg) or layers[0]["heads"] == config_heads(cfg)
