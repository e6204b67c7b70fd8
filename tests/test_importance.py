"""The importance layer: each criterion measures what it claims, and selection keeps what it should."""

from __future__ import annotations

import pytest
import torch

from prunekit.compact.remove import check_equal
from prunekit.core.errors import UsageError
from prunekit.importance import keep_counts, select_heads, unit_masks, unit_scores
from prunekit.importance.gates import GateHooks
from prunekit.importance.magnitude import magnitude_masks
from prunekit.topology import describe, get_module, weight_view
from tiny import FAMILIES, tiny_inputs, tiny_model


def _batches(family: str, n: int = 2) -> list[dict]:
    out = []
    for seed in range(n):
        batch = tiny_inputs(family, batch=3, seq=7, seed=seed)
        if family in ("llama", "gpt2"):
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        else:
            batch["labels"] = torch.tensor([0, 2, 1])
        out.append(batch)
    return out


def _loss(model, topo, batches, heads=None, neurons=None) -> float:
    hooks = GateHooks(model, topo)
    try:
        hooks.set_gates(heads or {}, neurons or {})
        with torch.no_grad():
            return sum(float(model(**b).loss) for b in batches)
    finally:
        hooks.remove()


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_taylor_is_the_first_order_loss_change_of_removing_a_unit(family):
    """Taylor score = |d loss / d gate|: the loss change per unit of gate, measured by a central difference
    in float64, for every head and neuron of a layer."""
    model = tiny_model(family).double()
    topo = describe(model)
    batches = _batches(family)
    scores = unit_scores(model, "taylor", batches)
    assert scores.batches == 2
    eps = 1e-2  # central difference: error O(eps^2); Llama's eager softmax runs in float32, so eps is not tiny
    b = topo.blocks[1]
    for kind, width in (("heads", b.attention.num_heads), ("neurons", b.ffn.width)):
        for j in range(width):
            up, down = torch.ones(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)
            up[j], down[j] = 1 + eps, 1 - eps
            plus = _loss(model, topo, batches, **{kind: {b.index: up}})
            minus = _loss(model, topo, batches, **{kind: {b.index: down}})
            layer = getattr(scores, kind)[b.index]
            noise = 2e-3 * float(layer.max())  # the float32 softmax's rounding, relative to the layer's scale
            assert float(layer[j]) == pytest.approx(abs(plus - minus) / (2 * eps), rel=2e-3, abs=noise), (kind, j)


def test_fisher_sums_the_squared_per_batch_gradients():
    model = tiny_model("bert").double()
    batches = _batches("bert", 3)
    fisher = unit_scores(model, "fisher", batches)
    per_batch = [unit_scores(model, "taylor", [b]) for b in batches]  # |grad| of each batch alone
    for layer, f in fisher.neurons.items():
        expected = sum(s.neurons[layer].double() ** 2 for s in per_batch)
        assert torch.allclose(f.double(), expected, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_activation_ranks_a_silenced_unit_last(family):
    """A neuron whose input rows are zero outputs act(0) = 0 and a head whose value rows are zero a zero context:
    both must score lowest of their layer."""
    model = tiny_model(family)
    topo = describe(model)
    b = topo.blocks[0]
    with torch.no_grad():
        for name in b.ffn.inputs:
            module = get_module(model, name)
            weight_view(module)[5].zero_()
            if getattr(module, "bias", None) is not None and module.bias.numel() == b.ffn.width:
                module.bias[5] = 0
        a = b.attention
        v_rows = slice(0, a.head_dim)  # KV head 0 (its whole group with grouped-query attention)
        if a.fused_qkv:  # GPT-2: c_attn holds Q, K, V; V starts after Q and K
            start = (a.num_heads + a.num_kv_heads) * a.head_dim
            v_rows = slice(start, start + a.head_dim)
            module = get_module(model, a.q)
        else:
            module = get_module(model, a.v)
        weight_view(module)[v_rows].zero_()
        if getattr(module, "bias", None) is not None:
            bias = module.bias.view(-1) if not a.fused_qkv else module.bias
            bias[v_rows] = 0
    scores = unit_scores(model, "activation", _batches(family))
    n = scores.neurons[b.index]
    assert int(n.argmin()) == 5 and float(n[5]) < 1e-6 < float(n.max())
    h = scores.heads[b.index]
    silenced = list(range(a.group_size))  # query heads reading KV head 0
    assert set(torch.argsort(h)[: len(silenced)].tolist()) == set(silenced)
    assert float(h[silenced].max()) < 1e-5 < float(h.max())


def test_activation_ignores_padding_tokens():
    model = tiny_model("bert")
    batch = tiny_inputs("bert", batch=2, seq=7)
    trimmed = {k: v[1:2, :5] for k, v in batch.items()}  # the padded row without its two pad tokens
    padded = {k: v[1:2] for k, v in batch.items()}
    a, b = unit_scores(model, "activation", [trimmed]), unit_scores(model, "activation", [padded])
    for layer in a.neurons:
        assert torch.allclose(a.neurons[layer], b.neurons[layer], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_magnitude_masks_come_from_the_importance_layer(family):
    model = tiny_model(family)
    topo = describe(model)
    scores = unit_scores(model, "magnitude")
    for pattern in ("head", "neuron"):
        old = magnitude_masks(model, pattern=pattern, sparsity=0.5, scope="layer")
        new = unit_masks(topo, scores, **{("heads" if pattern == "head" else "neurons"): 0.5})
        for i, lm in old.layers.items():
            got = new.layers[i]
            assert torch.equal(getattr(lm, pattern + "s"), getattr(got, pattern + "s"))


@pytest.mark.parametrize("family", FAMILIES)
def test_data_driven_masks_compact_exactly(family):
    model = tiny_model(family)
    scores = unit_scores(model, "taylor", _batches(family))
    masks = unit_masks(describe(model), scores, heads=0.5, neurons=0.5, scope="global")
    check_equal(model, masks, tiny_inputs(family))  # the masked model equals the compacted one


def test_selection_rules():
    assert keep_counts([torch.arange(4.0), torch.arange(8.0)], 0.5, "layer", 1) == [2, 4]
    # global: the second layer's units all score higher, the first keeps its minimum of one
    assert keep_counts([torch.zeros(4), torch.ones(8)], 0.5, "global", 1) == [1, 6]
    gqa = select_heads(torch.tensor([9.0, 8.0, 7.0, 1.0, 2.0, 3.0]), 2, num_kv=2)
    assert gqa.tolist() == [True, False, False, False, False, True]  # the best of each KV group, one each
    assert select_heads(torch.tensor([1.0, 3.0, 2.0]), 1, num_kv=3).tolist() == [False, True, False]


def test_criteria_errors():
    model = tiny_model("bert")
    with pytest.raises(UsageError, match="not one of"):
        unit_scores(model, "random")
    with pytest.raises(UsageError, match="calibration batches"):
        unit_scores(model, "taylor")
    with pytest.raises(UsageError, match="no calibration"):
        unit_scores(model, "fisher", [])
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in _batches("bert")]
    with pytest.raises(UsageError, match="labels"):
        unit_scores(model, "taylor", unlabelled)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_sensitivity_sums_absolute_gradients_so_it_bounds_taylor(family):
    """sum_b |g_b| >= |sum_b g_b| (equal for one batch); gating a head off first (`heads_keep`, Michel et al.'s
    iterative pruning) changes the other heads' scores and leaves the gated head's gradient defined."""
    model = tiny_model(family).eval()
    batches = _batches(family, n=3)
    sens = unit_scores(model, "sensitivity", batches)
    taylor = unit_scores(model, "taylor", batches)
    for i in sens.heads:
        assert torch.all(sens.heads[i] >= taylor.heads[i] - 1e-6)
        assert torch.all(sens.neurons[i] >= taylor.neurons[i] - 1e-6)
    one_sens, one_taylor = unit_scores(model, "sensitivity", batches[:1]), unit_scores(model, "taylor", batches[:1])
    for i in one_sens.heads:
        torch.testing.assert_close(one_sens.heads[i], one_taylor.heads[i], rtol=1e-5, atol=1e-7)
    keep = {i: torch.ones_like(s, dtype=torch.bool) for i, s in sens.heads.items()}
    first = next(iter(keep))
    keep[first][0] = False
    gated = unit_scores(model, "sensitivity", batches, heads_keep=keep)
    assert not torch.allclose(gated.heads[first], sens.heads[first])


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_elementwise_taylor_sums_per_weight_terms_and_bounds_taylor(family):
    """taylor-elementwise: sum of |w * g| over the unit's weights, g summed over the batches. The unit-level Taylor
    score is |sum of w * g| over the unit's output-projection weights alone, so it is never larger. The model's own
    gradients are left as they were."""
    model = tiny_model(family).double()
    topo = describe(model)
    batches = _batches(family, n=2)
    marker = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = marker[n].clone()
    scores = unit_scores(model, "taylor-elementwise", batches)
    assert all(torch.equal(p.grad, marker[n]) for n, p in model.named_parameters())
    taylor = unit_scores(model, "taylor", batches)
    for i in scores.heads:
        assert torch.all(scores.heads[i] >= taylor.heads[i] * (1 - 1e-5))
        assert torch.all(scores.neurons[i] >= taylor.neurons[i] * (1 - 1e-5))
    # by hand for one neuron: its input rows and its output column, in (out, in) orientation
    ref = tiny_model(family).double()
    for b in batches:
        ref(**b).loss.backward()
    block, j = topo.blocks[1], 5
    total = 0.0
    for name in block.ffn.inputs:
        m = get_module(ref, name)
        g = m.weight.grad.T if weight_view(m) is not m.weight else m.weight.grad
        total += float((weight_view(m)[j] * g[j]).abs().sum().detach())
    m = get_module(ref, block.ffn.output)
    g = m.weight.grad.T if weight_view(m) is not m.weight else m.weight.grad
    total += float((weight_view(m)[:, j] * g[:, j]).abs().sum().detach())
    assert float(scores.neurons[block.index][j]) == pytest.approx(total, rel=1e-5)
