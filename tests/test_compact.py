"""Compaction is exact: a compacted model computes what the masked model computes, for every family."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.compact.remove import check_equal, compact
from prunekit.core.errors import UsageError
from prunekit.masks import LayerMask, MaskSet, apply_masks, masks_from_zeros, sparsity_report
from prunekit.topology import describe
from tiny import FAMILIES, tiny_inputs, tiny_model

HEADS, KV, WIDTH, HIDDEN = 4, 2, 48, 32


def _heads(family: str, g: torch.Generator, allow_empty: bool = True) -> torch.Tensor:
    if family == "llama":  # GQA: whole KV groups, or the same count of query heads in each kept group
        per = int(torch.randint(0 if allow_empty else 1, 3, (1,), generator=g))
        groups = torch.rand(KV, generator=g) < 0.7
        if per and not groups.any():
            groups[0] = True
        return torch.stack(
            [torch.arange(2) < per if keep else torch.zeros(2, dtype=torch.bool) for keep in groups]
        ).flatten()
    return torch.rand(HEADS, generator=g) < 0.5


def random_masks(family: str, seed: int) -> MaskSet:
    g = torch.Generator().manual_seed(seed)
    masks = MaskSet()
    for i in range(3):
        masks.layers[i] = LayerMask(
            heads=_heads(family, g),
            neurons=torch.rand(WIDTH, generator=g) < 0.5,
            attn_rows=torch.rand(HIDDEN, generator=g) < 0.7 if i != 1 else None,
            ffn_rows=torch.rand(HIDDEN, generator=g) < 0.7 if i != 2 else None,
        )
    return masks


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_compact_exactly(family, seed):
    model = tiny_model(family, seed=seed)
    masks = random_masks(family, seed)
    check_equal(model, masks, tiny_inputs(family, seed=seed), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_edge_cases_compact_exactly(family):
    """A layer with no head, one with no neuron, one with a single head (or one KV group), dropped sublayers."""
    model = tiny_model(family)
    one_head = torch.tensor([True, False, False, False])
    if family == "llama":
        one_head = torch.tensor([True, False, True, False])  # one query head in each group
    masks = MaskSet(
        layers={
            0: LayerMask(heads=torch.zeros(HEADS, dtype=torch.bool), neurons=torch.ones(WIDTH, dtype=torch.bool)),
            1: LayerMask(
                heads=one_head,
                neurons=torch.zeros(WIDTH, dtype=torch.bool),
                attn_rows=torch.zeros(HIDDEN, dtype=torch.bool),
            ),
            2: LayerMask(drop_attention=True, drop_ffn=True),
        }
    )
    check_equal(model, masks, tiny_inputs(family))
    compacted = compact(copy.deepcopy(model), masks)
    topo = describe(compacted)
    assert topo.blocks[0].attention.num_heads == 0
    assert topo.blocks[1].ffn.width == 0
    assert topo.blocks[1].attention.num_heads == one_head.sum()
    assert topo.blocks[2].attention is None and topo.blocks[2].ffn is None


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_really_change_the_function(family):
    """The equality above is not vacuous: masking changes the output, and compaction shrinks the model."""
    model = tiny_model(family)
    masks = random_masks(family, 0)
    x = tiny_inputs(family)
    dense = model(**x).logits
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    assert (masked(**x).logits - dense).abs().max() > 1e-3
    compacted = compact(copy.deepcopy(model), masks)
    assert sum(p.numel() for p in compacted.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_compacting_twice_composes(family):
    """Pruning an already compacted model (scattered rows, fewer heads) stays exact."""
    model = tiny_model(family)
    first = random_masks(family, 3)
    for lm in first.layers.values():  # keep some head in every group so the second step has heads to prune
        lm.heads = torch.ones(HEADS, dtype=torch.bool)
    once = compact(copy.deepcopy(model), first)
    g = torch.Generator().manual_seed(7)
    second = MaskSet(
        layers={
            i: LayerMask(heads=_heads(family, g), attn_rows=torch.rand(HIDDEN, generator=g) < 0.6) for i in range(3)
        }
    )
    check_equal(once, second, tiny_inputs(family))


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_from_zeros_recover_the_structure(family):
    model = tiny_model(family)
    masks = random_masks(family, 5)
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    found = masks_from_zeros(masked)
    for i, lm in masks.layers.items():
        assert torch.equal(found.layers[i].neurons, lm.neurons)
        if family != "llama":
            assert torch.equal(found.layers[i].heads, lm.heads)
    check_equal(masked, found, tiny_inputs(family))


def test_gqa_non_uniform_heads_is_a_clear_error():
    model = tiny_model("llama")
    masks = MaskSet(layers={0: LayerMask(heads=torch.tensor([True, True, True, False]))})
    with pytest.raises(UsageError, match="same number in every kept group"):
        compact(model, masks)


def test_mask_of_wrong_size_is_a_clear_error():
    model = tiny_model("bert")
    with pytest.raises(UsageError, match="heads mask has 5 entries"):
        compact(model, MaskSet(layers={0: LayerMask(heads=torch.ones(5, dtype=torch.bool))}))


def test_sparsity_accounting_matches_compacted_parameters():
    model = tiny_model("bert")
    masks = random_masks("bert", 1)
    before = sparsity_report(model, masks)
    compacted = compact(copy.deepcopy(model), masks)
    after = sparsity_report(compacted)
    assert after["kept"] == before["kept"]
    assert [r["heads"] for r in after["layers"]] == [r["heads"] for r in before["layers"]]
    assert [r["ffn_width"] for r in after["layers"]] == [int(m.neurons.sum()) for m in masks.layers.values()]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 10_000))
def test_property_compaction_equals_masking(family, seed):
    check_equal(tiny_model(family, seed=seed % 3), random_masks(family, seed), tiny_inputs(family, seed=seed))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_compacted_decoder_generates_with_kv_cache(family):
    """Layers without attention never touch the KV cache; cached greedy decoding equals uncached."""
    model = tiny_model(family)
    heads = torch.tensor([True, False, True, False])
    masks = MaskSet(
        layers={
            0: LayerMask(heads=torch.zeros(HEADS, dtype=torch.bool)),
            1: LayerMask(drop_attention=True),
            2: LayerMask(heads=heads),
        }
    )
    compacted = compact(model, masks)
    ids = tiny_inputs(family)["input_ids"][:1]
    out = compacted.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    cur = ids
    for _ in range(5):
        nxt = compacted(cur, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        cur = torch.cat([cur, nxt], dim=1)
    assert torch.equal(out, cur)
