"""Property tests (hypothesis) for every mask operation: N:M projection (optimal, by brute force), block masks,
top-k, kept counts, compaction == masking on random shapes and random masks for every family, the MLPruning
top-k binariser and the NeuroPrune dominating set."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    MPNetConfig,
    RobertaConfig,
)

from prunekit.compact.remove import check_equal, compact
from prunekit.compact.structure import structure
from prunekit.masks import LayerMask, MaskSet, element_masks, merge
from prunekit.patterns import block_scores, expand_blocks, kept_count, nm_mask, nm_project, topk_mask
from prunekit.topology import get_module, weight_view
from tiny import FAMILIES

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _matrix(rows: int, cols: int, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return (w * 2).round() / 2 if ties else w  # coarse values: many ties in |w|


# ---------------------------------------------------------------- N:M


@FAST
@given(
    m=st.integers(2, 6),
    data=st.data(),
    rows=st.integers(1, 3),
    groups=st.integers(1, 3),
    seed=st.integers(0, 10**6),
    ties=st.booleans(),
)
def test_nm_projection_is_optimal(m, data, rows, groups, seed, ties):
    """Exactly N kept in every group of M, and no other N-subset keeps more of |w| (the Euclidean projection
    onto N:M sparsity keeps the N largest magnitudes); brute force over all subsets."""
    n = data.draw(st.integers(1, m - 1))
    w = _matrix(rows, groups * m, seed, ties)
    mask = nm_mask(w, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(nm_project(w, n, m), w * mask)
    for r in range(rows):
        for gi in range(groups):
            # float64: the reference subtracts sums of squares, which float32 rounds by ~1e-6 (a flaky failure)
            block = w[r, gi * m : (gi + 1) * m].abs().double()
            kept = mask[r, gi * m : (gi + 1) * m]
            assert int(kept.sum()) == n
            best = max(float(block[list(c)].sum()) for c in itertools.combinations(range(m), n))
            assert float(block[kept].sum()) == pytest.approx(best, abs=1e-6)
            # distance to the projection is minimal too: ||w - P(w)||^2 = sum of the dropped squares
            dropped = float(block[~kept].pow(2).sum())
            assert (
                dropped
                <= min(
                    float(block.pow(2).sum() - block[list(c)].pow(2).sum()) for c in itertools.combinations(range(m), n)
                )
                + 1e-6
            )


@FAST
@given(m=st.integers(2, 6), tail=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_nm_partial_tail_is_refused_or_kept_dense(m, tail, seed):
    tail = tail % m or 1
    w = _matrix(2, m * 2 + tail, seed, False)
    from prunekit.core.errors import UsageError

    with pytest.raises(UsageError, match=f"divisible by {m}"):
        nm_mask(w, 1, m)
    mask = nm_mask(w, 1, m, pad_tail=True)
    assert bool(mask[:, -tail:].all()) and int(mask[:, : 2 * m].sum()) == 2 * 2


# ---------------------------------------------------------------- top-k and counts


@FAST
@given(
    n=st.integers(1, 40),
    keep=st.integers(-3, 45),
    seed=st.integers(0, 10**6),
    ties=st.booleans(),
    rows=st.integers(1, 3),
)
def test_topk_mask_keeps_the_k_largest(n, keep, seed, ties, rows):
    scores = _matrix(rows, n, seed, ties)
    mask = topk_mask(scores, keep)
    k = max(0, min(keep, scores.numel()))
    assert mask.shape == scores.shape and int(mask.sum()) == k
    if 0 < k < scores.numel():
        assert float(scores[mask].min()) >= float(scores[~mask].max())
    assert torch.equal(mask, topk_mask(scores.clone(), keep))  # deterministic


@FAST
@given(total=st.integers(0, 5000), sparsity=st.floats(0, 0.999), minimum=st.integers(0, 3))
def test_kept_count(total, sparsity, minimum):
    k = kept_count(total, sparsity, minimum)
    assert max(minimum, 0) <= k <= max(total, minimum)
    if total and minimum <= total:
        assert k >= math.ceil(total * (1 - sparsity) - 1e-6)
        assert k <= math.ceil(total * (1 - sparsity) + 1e-6) or k == minimum
        assert kept_count(total, min(sparsity + 0.1, 0.999), minimum) <= k  # more sparsity never keeps more


# ---------------------------------------------------------------- blocks


@FAST
@given(b0=st.integers(1, 4), b1=st.integers(1, 4), r=st.integers(1, 4), c=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_block_scores_and_expansion(b0, b1, r, c, seed):
    w = _matrix(b0 * r, b1 * c, seed, False)
    scores = block_scores(w, (b0, b1))
    assert scores.shape == (r, c)
    for i in range(r):
        for j in range(c):
            tile = w[i * b0 : (i + 1) * b0, j * b1 : (j + 1) * b1]
            assert float(scores[i, j]) == pytest.approx(float(tile.norm()), rel=1e-5, abs=1e-6)
    keep = scores > scores.median()
    full = expand_blocks(keep, (b0, b1))
    assert full.shape == w.shape
    for i in range(r):
        for j in range(c):
            tile = full[i * b0 : (i + 1) * b0, j * b1 : (j + 1) * b1]
            assert bool((tile == keep[i, j]).all())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block=st.sampled_from([(4, 4), (8, 8), (4, 16), (16, 8), (2, 8)]),
    sparsity=st.floats(0, 0.95),
    scope=st.sampled_from(["layer", "global"]),
    seed=st.integers(0, 100),
)
def test_magnitude_block_masks_are_whole_top_tiles(block, sparsity, scope, seed):
    from prunekit.importance.magnitude import magnitude_masks

    model = _model("bert", layers=2, heads=4, kv=4, head_dim=8, ffn=48, seed=seed)
    masks = magnitude_masks(model, pattern=f"{block[0]}x{block[1]}", sparsity=sparsity, scope=scope)
    all_kept, all_dropped, total_tiles, kept_tiles = [], [], 0, 0
    for name, mask in masks.weights.items():
        w = weight_view(get_module(model, name)).detach()
        scores = block_scores(w, block)
        tiles = mask.reshape(scores.shape[0], block[0], scores.shape[1], block[1])
        per_tile = tiles.any(3).any(1)
        assert torch.equal(tiles.all(3).all(1), per_tile)  # every tile kept or dropped whole
        if scope == "layer":
            assert int(per_tile.sum()) == kept_count(scores.numel(), sparsity)
            if per_tile.any() and not per_tile.all():
                assert float(scores[per_tile].min()) >= float(scores[~per_tile].max())
        all_kept.append(scores[per_tile])
        all_dropped.append(scores[~per_tile])
        total_tiles += scores.numel()
        kept_tiles += int(per_tile.sum())
    if scope == "global":
        assert kept_tiles == kept_count(total_tiles, sparsity)
        kept, dropped = torch.cat(all_kept), torch.cat(all_dropped)
        if kept.numel() and dropped.numel():
            assert float(kept.min()) >= float(dropped.max())


# ---------------------------------------------------------------- compaction on random shapes and masks


def _config(family: str, layers: int, heads: int, kv: int, head_dim: int, ffn: int):
    hidden = heads * head_dim
    common = dict(vocab_size=61, attn_implementation="eager", initializer_range=0.3)
    enc = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
               num_labels=2, **common)  # fmt: skip
    if family == "bert":
        return BertConfig(max_position_embeddings=32, **enc)
    if family == "roberta":
        return RobertaConfig(max_position_embeddings=40, pad_token_id=1, **enc)
    if family == "mpnet":
        return MPNetConfig(max_position_embeddings=40, **enc)
    if family == "distilbert":
        return DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn, max_position_embeddings=32,
                                num_labels=2, **common)  # fmt: skip
    if family == "llama":
        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=kv, head_dim=head_dim, intermediate_size=ffn,
                           max_position_embeddings=32, **common)  # fmt: skip
    return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=32, **common)


def _model(family: str, *, layers: int, heads: int, kv: int, head_dim: int, ffn: int, seed: int):
    torch.manual_seed(seed)
    cfg = _config(family, layers, heads, kv, head_dim, ffn)
    auto = AutoModelForCausalLM if family in ("llama", "gpt2") else AutoModelForSequenceClassification
    model = auto.from_config(cfg)
    with torch.no_grad():  # random biases and norms, so a dropped bias or norm would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@st.composite
def pruned_models(draw, family: str):
    layers = draw(st.integers(1, 3))
    if family == "llama":
        kv = draw(st.sampled_from([1, 2, 4]))
        heads = kv * draw(st.sampled_from([1, 2, 3]))
    else:
        heads = kv = draw(st.sampled_from([1, 2, 3, 4]))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    ffn = draw(st.integers(1, 24))
    hidden = heads * head_dim
    bools = lambda n: st.lists(st.booleans(), min_size=n, max_size=n).map(lambda x: torch.tensor(x, dtype=torch.bool))  # noqa: E731,E501
    masks = MaskSet()
    for i in range(layers):
        lm = LayerMask()
        if family == "llama":  # GQA: whole KV groups go, kept groups keep the same number of query heads
            group = heads // kv
            per = draw(st.integers(0, group))
            kept_groups = draw(st.lists(st.booleans(), min_size=kv, max_size=kv))
            rows = []
            for keep in kept_groups:
                chosen = set(draw(st.permutations(range(group)))[:per]) if keep else set()
                rows.append(torch.tensor([t in chosen for t in range(group)], dtype=torch.bool))
            lm.heads = torch.cat(rows)
        elif draw(st.booleans()):
            lm.heads = draw(bools(heads))
        if draw(st.booleans()):
            lm.neurons = draw(bools(ffn))
        if draw(st.integers(0, 3)) == 0:
            lm.attn_rows = draw(bools(hidden))
        if draw(st.integers(0, 3)) == 0:
            lm.ffn_rows = draw(bools(hidden))
        lm.drop_attention = draw(st.integers(0, 7)) == 0
        lm.drop_ffn = draw(st.integers(0, 7)) == 0
        masks.layers[i] = lm
    seed = draw(st.integers(0, 10**6))
    model = _model(family, layers=layers, heads=heads, kv=kv, head_dim=head_dim, ffn=ffn, seed=seed % 7)
    return model, masks, seed


def _inputs(seed: int, batch: int = 2, seq: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, -2:] = 0
    return {"input_ids": torch.randint(3, 61, (batch, seq), generator=g), "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
def test_compaction_equals_masking_on_random_shapes(family):
    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=pruned_models(family))
    def check(case):
        model, masks, seed = case
        check_equal(model, masks, _inputs(seed), atol=2e-4)
        compacted = compact(model, masks)
        for i, lm in masks.layers.items():  # and the shapes really shrank to what the masks keep
            entry = structure(compacted)[i]
            if lm.drop_attention:
                assert entry["attention"] == "dropped"
            elif lm.heads is not None:
                assert entry["heads"] == int(lm.heads.sum())
            if lm.drop_ffn:
                assert entry["ffn"] == "dropped"
            elif lm.neurons is not None:
                assert entry["ffn_width"] == int(lm.neurons.sum())

    check()


@settings(max_examples=25, deadline=None)
@given(data=st.data(), seed=st.integers(0, 10**6))
def test_merge_keeps_a_unit_only_if_every_set_keeps_it(data, seed):
    model = _model("bert", layers=2, heads=4, kv=4, head_dim=4, ffn=8, seed=0)
    sets = []
    for _ in range(data.draw(st.integers(1, 3))):
        ms = MaskSet()
        for i in range(2):
            ms.layers[i] = LayerMask(
                heads=data.draw(st.none() | st.lists(st.booleans(), min_size=4, max_size=4).map(torch.tensor)),
                neurons=data.draw(st.none() | st.lists(st.booleans(), min_size=8, max_size=8).map(torch.tensor)),
            )
        sets.append(ms)
    merged = element_masks(model, merge(*sets))
    singles = [element_masks(model, s) for s in sets]
    for name, (w, b) in merged.items():
        want_w = torch.stack([s[name][0] for s in singles if name in s]).all(0)
        want_b = torch.stack([s[name][1] for s in singles if name in s]).all(0)
        assert torch.equal(w, want_w) and torch.equal(b, want_b)


# ---------------------------------------------------------------- MLPruning binariser, NeuroPrune dominating set


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 64), t=st.floats(-15.0, 15.0, allow_nan=False), seed=st.integers(0, 10**6), ties=st.booleans())
def test_mlpruning_binariser_keeps_ceil_sigmoid_t_times_n(n, t, seed, ties):
    mlp = pytest.importorskip("prunekit.methods.mlpruning.method")
    scores = _matrix(1, n, seed, ties).flatten().requires_grad_()
    threshold = torch.tensor(float(t), requires_grad=True)
    mask = mlp.TopKBinarizer.apply(scores, threshold)
    r = float(torch.sigmoid(torch.tensor(float(t))))
    k = min(n, max(1, math.ceil(r * n)))
    assert set(mask.tolist()) <= {0.0, 1.0} and int(mask.sum()) == k
    kept, values = mask.bool(), scores.detach()
    if 0 < k < n:
        assert float(values[kept].min()) >= float(values[~kept].max())
    upstream = torch.randn(n)
    (mask * upstream).sum().backward()
    assert torch.equal(scores.grad, upstream)  # straight-through to the scores


@st.composite
def similarity_matrices(draw):
    n = draw(st.integers(1, 9))
    s = torch.eye(n, dtype=torch.bool)
    for i in range(n):
        for j in range(i + 1, n):
            s[i, j] = s[j, i] = draw(st.booleans())
    return s


@settings(max_examples=150, deadline=None)
@given(s=similarity_matrices())
def test_neuroprune_dominating_set(s):
    heads = pytest.importorskip("prunekit.methods.neuroprune.heads")
    dom = heads.dominators(s)
    kept = set(dom)
    n = s.shape[0]
    assert len(dom) == n
    for i in range(n):
        # every head is kept, or dominated by a kept head that is similar to it
        assert i in kept or (dom[i] in kept and bool(s[dom[i], i]))
        assert dom[dom[i]] == dom[i]  # a kept head maps to itself
    # the kept heads dominate the similarity graph: every head is kept or adjacent to a kept head
    assert all(i in kept or any(bool(s[i, j]) for j in kept) for i in range(n))
    d = heads.dominating_matrix(s)
    assert torch.equal(d.sum(1), torch.ones(n, dtype=torch.long))
