"""The proximal form shared by l1 and neuroprune (methods/shrinkage.py): the soft threshold is the proximal map,
one step pulls each entry by exactly lambda * omega * m, and the group weights are the linearised l_1/2 norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.methods.base import create_method
from prunekit.methods.baselines.shrinkage import ShrinkConfig, ShrinkState, mean_one, soft_threshold_
from prunekit.methods.neuroprune.method import group_weights
from prunekit.topology import describe, get_module, weight_view
from tiny import tiny_model


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=8),
    st.floats(0, 2, allow_nan=False),
)
def test_soft_threshold_is_the_proximal_map(values, tau):
    """x* = argmin_x 0.5 (x - v)^2 + tau |x|, checked against a fine grid around v for every entry."""
    v = torch.tensor(values, dtype=torch.float32)
    x = v.clone()
    soft_threshold_(x, tau)
    grid = np.linspace(-5.0, 5.0, 20001)
    for vi, xi in zip(v.tolist(), x.tolist(), strict=True):

        def f(z, vi=vi):
            return 0.5 * (z - vi) ** 2 + tau * np.abs(z)

        assert f(xi) <= f(grid).min() + 1e-6
        assert abs(xi) <= abs(vi) and (xi == 0 or np.sign(xi) == np.sign(vi))


def test_group_weights_are_the_slope_of_the_group_norm():
    a = torch.tensor([[1.0, 4.0, 0.0, 0.25], [1.0, 0.0, 0.0, 0.0]])  # column masses 2, 4, 0, 0.25
    g = group_weights([a, a])  # Q and K share the columns: masses 4, 8, 0, 0.5
    live = torch.tensor([4.0, 8.0, 0.5])
    slope = 1 / live.sqrt()  # d sqrt(s) / ds, up to the factor 1/2 the normalisation removes
    assert g.shape == (1, 4)
    assert torch.allclose(g[0, [0, 1, 3]], slope / slope.median(), rtol=1e-5)
    assert float(g[0, [0, 1, 3]].median()) == pytest.approx(1.0)  # the dead column does not set the scale


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_one_proximal_step_pulls_each_entry_by_its_threshold(family):
    """Outside target mode, one step soft-thresholds FFN rows / columns by the mean-1 degree weights and Q/K/V
    columns by the group weights, each times shrink / total_steps x the matrix's mean |w| at attach."""
    model = tiny_model(family)
    topo = describe(model)
    with torch.no_grad():  # thin some neurons so the degree weights differ
        w1 = weight_view(get_module(model, topo.blocks[0].ffn.inputs[0]))
        w1[:6, : w1.shape[1] // 2] = 0.0
    method = create_method("neuroprune", {"shrink": 2.0, "alpha": 3e-4, "beta": 1e-4})
    method.attach(model, topo)
    b = topo.blocks[0]
    names = [b.ffn.inputs[0], b.ffn.output, b.attention.q]
    before = {n: weight_view(get_module(model, n)).detach().clone() for n in (*names, *b.attention.linears())}
    m = {n: float(before[n].abs().mean()) for n in names}
    c_in, c_out = mean_one(method.c_in[0]) * 1.5, mean_one(method.c_out[0]) * 1.5  # alpha / mean(alpha, beta)
    qkv = (
        [before[b.attention.q]]
        if b.attention.fused_qkv
        else [before[n] for n in (b.attention.q, b.attention.k, b.attention.v)]
    )
    g = group_weights(qkv) * 0.5  # beta / mean(alpha, beta)
    total = 40
    method.on_step(1, total)
    lam = 2.0 / total
    expected = {
        names[0]: (before[names[0]], c_in[:, None] * lam * m[names[0]]),
        names[1]: (before[names[1]], c_out[None, :] * lam * m[names[1]]),
        names[2]: (before[names[2]], g * lam * m[names[2]]),
    }
    for n, (w, tau) in expected.items():
        want = torch.sign(w) * torch.clamp(w.abs() - tau, min=0)
        assert torch.allclose(weight_view(get_module(model, n)), want, atol=1e-7), n
    assert bool((c_in[:6] > c_in[6:].max()).all())  # the thinned neurons are pulled hardest


@pytest.mark.parametrize("capped", [True, False])
def test_capped_pull_leaves_weights_above_the_target_quantile_alone(capped):
    """Target mode pulls only entries below the target quantile of |w| / m (capped L1): the weights that survive
    the target keep their magnitude; uncapped, every entry is pulled by the same tau."""
    model = tiny_model("bert")
    topo = describe(model)
    method = create_method("l1", {"target_sparsity": 0.5, "capped": capped})
    method.attach(model, topo)
    pulls = method._pulls()
    cap = method.shrink.quantile(pulls, 0.5)
    before = {n: w.detach().clone() for n, w, _ in pulls}
    method.on_step(1, 100)
    lam = method.shrink.scale * method.config.shrink / 100  # the scale was raised before the pull
    moved = 0
    for name, w, _ in pulls:
        old, m = before[name], method.shrink.mean_abs[name]
        band = (old.abs() / m <= cap) if capped else torch.ones_like(old, dtype=torch.bool)
        want = torch.where(band, torch.sign(old) * torch.clamp(old.abs() - lam * m, min=0), old)
        assert torch.allclose(w, want, atol=1e-7), name
        moved += int((w != old).sum())
    total = sum(w.numel() for _, w, _ in pulls)
    assert (moved <= 0.5 * total + 1) if capped else moved > 0.9 * total


def test_the_cap_is_a_magnitude_whatever_the_penalty_weight():
    """A large omega (a thin neuron's degree weight) speeds the pull on its unit's small entries but never reaches
    a weight above the target magnitude quantile. Capping the weighted score instead emptied thin neurons, large
    weights included, and took SmolLM2-135M from perplexity 21 to 66 at 25% sparsity (docs/results.md)."""
    state = ShrinkState(ShrinkConfig(target_sparsity=0.5))
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    omega = torch.ones(8, 1)
    omega[0] = 50.0
    pulls = [("w", w, omega)]
    state.attach(pulls)
    m = state.mean_abs["w"]
    cap = state.quantile([("w", w, 1.0)], 0.5)
    before = w.clone()
    lam = state.step(pulls, total_steps=10, mode="pull")
    band = before.abs() / m <= cap
    want = torch.where(band, torch.sign(before) * torch.clamp(before.abs() - omega * lam * m, min=0), before)
    assert torch.allclose(w, want, atol=1e-7)
    assert bool((~band[0]).any()) and torch.equal(w[0][~band[0]], before[0][~band[0]])  # row 0's large weights kept
    assert bool((w[0][band[0]] == 0).all())  # ...and its small ones pulled 50x harder, to zero
