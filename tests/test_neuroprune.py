"""NeuroPrune (METHODS.md 1): the dominating set, head folding, the regularisers, the end of training, target mode,
checkpointed state, and runs under the real trainer."""

from __future__ import annotations

import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.compact.remove import check_equal, compact
from prunekit.core.errors import UsageError
from prunekit.masks import MaskSet, element_masks
from prunekit.methods.base import create_method
from prunekit.methods.neuroprune.heads import dominating_matrix, dominators, prune_redundant_heads, similarity
from prunekit.methods.neuroprune.method import attention_penalty, degree_weights, ffn_penalty
from prunekit.patterns import kept_count
from prunekit.topology import describe, get_module, weight_view
from tiny import tiny_inputs, tiny_model

# ---------------------------------------------------------------- the dominating set


def literal_find_dominating(S) -> np.ndarray:
    """METHODS.md 1d's pseudo-code, transcribed line by line."""
    S = np.array(S, dtype=int)
    h = len(S)
    D = np.zeros((h, h), dtype=int)
    for i in range(h):
        js = i
        for j in range(h):
            s = S[js] - S[j]
            if (1 not in s and -1 in s) or (all(s == 0) and js < j):
                js = j
        D[i, js] = 1
    return D


def _sym(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    s = [[int(i == j) for j in range(n)] for i in range(n)]
    for a, b in edges:
        s[a][b] = s[b][a] = 1
    return s


HAND = [
    (_sym(3, []), [0, 1, 2]),  # nothing similar: nothing removed
    (_sym(4, [(a, b) for a in range(4) for b in range(a)]), [3, 3, 3, 3]),  # all alike: the last one stays
    (_sym(3, [(0, 1), (1, 2)]), [1, 1, 1]),  # a path: its middle dominates
    (_sym(4, [(0, 2), (1, 2)]), [2, 2, 2, 3]),  # a star plus a loner
    (_sym(4, [(0, 1), (2, 3)]), [1, 1, 3, 3]),  # two tied pairs: the later head of each stays
    (_sym(4, [(0, 1), (0, 2), (1, 2), (2, 3)]), [2, 2, 2, 2]),  # 0 ~ 1 tie, then N(1) < N(2)
    (_sym(5, [(3, 4), (0, 4), (1, 2)]), [4, 2, 2, 4, 4]),
]


@pytest.mark.parametrize("S,expected", HAND)
def test_dominating_set_hand_worked(S, expected):
    assert dominators(S) == expected
    D = dominating_matrix(torch.tensor(S))
    assert D.tolist() == literal_find_dominating(S).tolist()
    assert [row.index(1) for row in D.tolist()] == expected


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.booleans(), min_size=n * n, max_size=n * n)))
)
def test_dominating_set_properties(case):
    n, bits = case
    S = [[int(i == j or bits[min(i, j) * n + max(i, j)]) for j in range(n)] for i in range(n)]
    dom = dominators(S)
    assert dominating_matrix(torch.tensor(S)).tolist() == literal_find_dominating(S).tolist()
    assert dominators(S) == dom  # deterministic
    kept = {i for i in range(n) if dom[i] == i}
    assert kept
    for i in range(n):  # kept, or similar to (dominated by) a kept head
        assert i in kept or (S[i][dom[i]] == 1 and dom[i] in kept)


def test_similarity_is_max_abs_difference():
    p = torch.zeros(3, 2, 2)
    p[1, 0, 0] = 0.15
    p[2, 1, 1] = -0.2
    assert similarity(p, 0.15).int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert similarity(p, 0.35).all()


# ---------------------------------------------------------------- folding identical heads


def _copy_group(model, att, src: int, dst: int) -> None:
    """Make KV group `dst` an exact copy of group `src` (its query heads' Q rows, its K/V rows, their biases)."""
    h, kv, dh, g = att.num_heads, att.num_kv_heads, att.head_dim, att.group_size

    def copy_rows(module, offset: int, rows_per: int) -> None:
        w = weight_view(module)
        a, b = offset + src * rows_per, offset + dst * rows_per
        w[b : b + rows_per] = w[a : a + rows_per].clone()
        if getattr(module, "bias", None) is not None:
            module.bias[b : b + rows_per] = module.bias[a : a + rows_per].clone()

    with torch.no_grad():
        if att.fused_qkv:
            m = get_module(model, att.q)
            copy_rows(m, 0, g * dh)
            copy_rows(m, h * dh, dh)
            copy_rows(m, (h + kv) * dh, dh)
        else:
            copy_rows(get_module(model, att.q), 0, g * dh)
            copy_rows(get_module(model, att.k), 0, dh)
            copy_rows(get_module(model, att.v), 0, dh)


def _logits(model, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**tiny_inputs(family)).logits


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_folding_identical_heads_keeps_the_function(family):
    model = tiny_model(family)
    topo = describe(model)
    att = topo.blocks[1].attention
    _copy_group(model, att, 0, 1)
    before = _logits(model, family)
    unmerged = copy.deepcopy(model)
    step = prune_redundant_heads(model, topo, theta=1e-6)
    g = att.group_size
    assert step.merges == [(1, t, g + t) for t in range(g)]  # tie: group 0 folds into the later group 1
    assert list(step.keep) == [1] and step.keep[1].tolist() == [False] * g + [True] * (att.num_heads - g)
    assert torch.allclose(_logits(model, family), before, atol=1e-5)
    masks = MaskSet()
    masks.layer(1).heads = step.keep[1]
    compact(model, masks)
    assert describe(model).blocks[1].attention.num_heads == att.num_heads - g
    assert torch.allclose(_logits(model, family), before, atol=1e-5)
    prune_redundant_heads(unmerged, describe(unmerged), theta=1e-6, merge=False)  # removal without folding
    assert not torch.allclose(_logits(unmerged, family), before, atol=1e-3)


def test_head_step_skips_removed_heads_and_keeps_one():
    model = tiny_model("bert")
    topo = describe(model)
    first = prune_redundant_heads(model, topo, theta=1e6)  # every head alike: the last of each layer stays
    assert all(k.tolist() == [False, False, False, True] for k in first.keep.values()) and first.removed == 9
    again = prune_redundant_heads(model, topo, theta=1e6, keep=first.keep)
    assert again.removed == 0 and {i: k.tolist() for i, k in again.keep.items()} == {
        i: k.tolist() for i, k in first.keep.items()
    }


def test_relative_theta_scales_with_the_weights():
    model = tiny_model("bert")
    topo = describe(model)
    att = topo.blocks[0].attention
    with torch.no_grad():  # head 1 = head 0 + 0.05: mean |w| is about 0.24, so similar at 0.5 x, not at 0.1 x
        q = weight_view(get_module(model, att.q))
        q[8:16] = q[0:8] + 0.05
        for name in (att.k, att.v):
            w = weight_view(get_module(model, name))
            w[8:16] = w[0:8]
    tight = prune_redundant_heads(copy.deepcopy(model), topo, theta=0.1, theta_mode="relative")
    loose = prune_redundant_heads(copy.deepcopy(model), topo, theta=0.5, theta_mode="relative")
    assert 0 not in tight.keep and loose.merges[:1] == [(0, 0, 1)]


# ---------------------------------------------------------------- the regularisers


def test_regularisers_match_hand_computed_values():
    w1 = torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.0, 0.5]])  # 2 neurons, d = 3: fin = 2/3, 1/3
    w2 = torch.tensor([[3.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])  # fout = 2/3, 1/3
    c_in = degree_weights(torch.tensor([2 / 3, 1 / 3]), "linear")
    c_out = degree_weights(torch.tensor([2 / 3, 1 / 3]), "linear")
    # 1/3 * (1 + 2) + 2/3 * 0.5 + 1/3 * (3 + 1) + 2/3 * 1
    assert float(ffn_penalty([w1], w2, c_in, c_out)) == pytest.approx(10 / 3, rel=1e-6)
    inv = degree_weights(torch.tensor([2 / 3, 1 / 3]), "inverse")
    a, b = 1 / (2 / 3 + 1e-3), 1 / (1 / 3 + 1e-3)
    assert inv.tolist() == pytest.approx([2 * a / (a + b), 2 * b / (a + b)], rel=1e-6)
    assert float(ffn_penalty([w1], w2, inv, inv)) == pytest.approx(
        float(inv[0] * 3 + inv[1] * 0.5 + inv[0] * 4 + inv[1] * 1), rel=1e-6
    )
    # gated FFN: both input rows share the neuron's weight
    assert float(ffn_penalty([w1, 2 * w1], w2, c_in, c_out)) == pytest.approx(10 / 3 + 2 * (1 + 1 / 3), rel=1e-6)
    wq, wk, wv = (
        torch.tensor([[1.0, -1.0], [0.0, 2.0]]),
        torch.tensor([[0.0, 0.0], [1.0, 0.0]]),
        torch.tensor([[-3.0, 0.0]]),
    )
    assert float(attention_penalty([wq, wk, wv])) == pytest.approx(math.sqrt(5 + 1e-8) + math.sqrt(3 + 1e-8))


def test_dead_neurons_do_not_set_the_degree_weights_of_the_live_ones():
    """A dead neuron (in- or out-degree 0) would weigh 1 / 1e-3 and, through the mean-1 normalisation, cut every
    live neuron's pull; the live neurons' weights are those of the live neurons alone."""
    frac = torch.tensor([1.0, 0.5, 0.25, 0.0, 0.0])
    live = frac > 0
    for weighting in ("inverse", "linear"):
        w = degree_weights(frac, weighting, live)
        alone = degree_weights(frac[:3], weighting)
        assert w[:3].tolist() == pytest.approx(alone.tolist(), rel=1e-6), weighting
        assert w[3:].tolist() == pytest.approx([float(alone.mean())] * 2, rel=1e-6), weighting
    model = tiny_model("llama")
    topo = describe(model)
    b = topo.blocks[0]
    with torch.no_grad():  # neuron 0 dead as the method leaves one: gate and up rows and down column zero
        for name in b.ffn.inputs:
            weight_view(get_module(model, name))[0] = 0.0
        weight_view(get_module(model, b.ffn.output))[:, 0] = 0.0
    method = create_method("neuroprune", {})
    method.attach(model, topo)
    assert float(method.c_in[0][1:].mean()) == pytest.approx(1.0, rel=1e-5)
    assert float(method.c_in[0].max()) < 10  # the dead neuron does not stand at ~1 / 1e-3


def _sparsify(model, topo) -> None:
    """Zero a pattern of FFN weights so the degrees differ from neuron to neuron."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in topo.blocks:
            for name in (*b.ffn.inputs, b.ffn.output):
                w = weight_view(get_module(model, name))
                w[torch.rand(w.shape, generator=g) < 0.4] = 0.0


@pytest.mark.parametrize("family,weighting", [("bert", "linear"), ("llama", "inverse"), ("gpt2", "linear")])
def test_method_terms_and_their_gradient(family, weighting):
    model = tiny_model(family)
    topo = describe(model)
    _sparsify(model, topo)
    method = create_method("neuroprune", {"alpha": 0.01, "beta": 0.003, "weighting": weighting, "penalty": "loss"})
    method.attach(model, topo)
    assert create_method("neuroprune", {}).config.penalty == "proximal"  # the default form adds no loss terms
    terms = method.loss_terms(model, {}, None)
    assert set(terms) == {"ffn_reg", "att_reg"}
    ffn, att, cins = 0.0, 0.0, []
    for b in topo.blocks:  # independent numpy computation of both terms
        ins = [weight_view(get_module(model, n)).detach().numpy() for n in b.ffn.inputs]
        out = weight_view(get_module(model, b.ffn.output)).detach().numpy()
        fin = sum((np.abs(w) > 1e-4).sum(1) for w in ins) / (len(ins) * out.shape[0])
        fout = (np.abs(out) > 1e-4).sum(0) / out.shape[0]
        if weighting == "linear":
            cin, cout = 1 - fin, 1 - fout
        else:
            cin, cout = 1 / (fin + 1e-3), 1 / (fout + 1e-3)
            cin, cout = cin / cin.mean(), cout / cout.mean()
        cins.append(cin)
        ffn += sum((cin[:, None] * np.abs(w)).sum() for w in ins) + (np.abs(out) * cout[None, :]).sum()
        a = b.attention
        qkv = [weight_view(get_module(model, n)).detach().numpy() for n in ([a.q] if a.fused_qkv else [a.q, a.k, a.v])]
        att += np.sqrt(sum(np.abs(w).sum(0) for w in qkv) + 1e-8).sum()
    assert float(terms["ffn_reg"].detach()) == pytest.approx(0.01 * ffn, rel=1e-5)
    assert float(terms["att_reg"].detach()) == pytest.approx(0.003 * att, rel=1e-5)
    # the degree weights are constants: d ffn_reg / d W1 = alpha * c_in * sign(W1), nothing flows into them
    assert not any(t.requires_grad for t in (*method.c_in.values(), *method.c_out.values()))
    terms["ffn_reg"].backward()
    w1 = get_module(model, topo.blocks[0].ffn.inputs[0]).weight
    grad, w = (w1.grad.T, w1.T) if family == "gpt2" else (w1.grad, w1)
    expected = 0.01 * torch.tensor(cins[0], dtype=torch.float32)[:, None] * w.detach().sign()
    assert torch.allclose(grad, expected, atol=1e-7)


def test_degree_refresh_every_n_steps():
    model = tiny_model("bert")
    topo = describe(model)
    method = create_method(
        "neuroprune", {"degree_refresh_steps": 3, "penalty": "loss", "weighting": "linear"}
    )  # on_step moves no weight
    method.attach(model, topo)
    before = method.c_in[0].clone()
    with torch.no_grad():  # half of 5 neurons' input rows: linear weight 1 - 1/2 (emptied, they would be dead)
        w1 = weight_view(get_module(model, topo.blocks[0].ffn.inputs[0]))
        w1[:5, : w1.shape[1] // 2] = 0.0
    method.on_step(1, 10)
    method.on_step(2, 10)
    assert torch.equal(method.c_in[0], before)
    logged = method.on_step(3, 10)
    half = 1 - (w1.shape[1] - w1.shape[1] // 2) / w1.shape[1]
    assert method.c_in[0][:5].tolist() == pytest.approx([half] * 5) and torch.equal(method.c_in[0][5:], before[5:])
    assert {"near_zero", "degree_mean", "degree_std", "ffn_l1", "heads_kept"} <= set(logged)


# ---------------------------------------------------------------- training steps, as the trainer calls them


def _batch(family: str) -> dict:
    inputs = tiny_inputs(family)
    labels = inputs["input_ids"].clone() if family in ("llama", "gpt2") else torch.tensor([0, 2])
    return {**inputs, "labels": labels}


def _steps(model, method, family: str, steps: range, total: int = 20, lr: float = 1e-2) -> list[dict]:
    opt = getattr(method, "_test_opt", None)
    if opt is None:
        opt = method._test_opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    batch, logs = _batch(family), []
    model.train()
    for step in steps:
        out = model(**batch)
        loss = out.loss + sum(method.loss_terms(model, batch, out).values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs.append(method.on_step(step, total))
        method.enforce_masks(model)
    return logs


def _ffn_l1(model, topo) -> float:
    return sum(
        float(weight_view(get_module(model, n)).detach().abs().sum()) for b in topo.blocks for n in b.ffn.linears()
    )


@pytest.mark.parametrize(
    "weighting,eps,penalty",
    [("inverse", 1e-4, "loss"), ("linear", 0.3, "loss"), ("inverse", 1e-4, "proximal"), ("linear", 0.3, "proximal")],
)
def test_penalties_shrink_the_ffn(weighting, eps, penalty):
    runs = {}
    for alpha in (0.0, 0.05):
        model = tiny_model("bert")
        spec = {"alpha": alpha, "beta": alpha, "weighting": weighting, "eps": eps, "penalty": penalty, "shrink": 1.0}
        method = create_method("neuroprune", spec)
        method.attach(model, describe(model))
        start = _ffn_l1(model, method.topo)
        logs = _steps(model, method, "bert", range(1, 16))
        runs[alpha] = _ffn_l1(model, method.topo), logs
    assert runs[0.05][0] < 0.9 * runs[0.0][0] and runs[0.05][0] < start
    assert runs[0.05][1][-1]["ffn_l1"] == pytest.approx(runs[0.05][0], rel=1e-5)


# ---------------------------------------------------------------- the end of training


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_threshold_and_zero_degree_neurons(family, tmp_path):
    model = tiny_model(family)
    topo = describe(model)
    method = create_method("neuroprune", {})
    method.attach(model, topo)
    ffn = topo.blocks[1].ffn
    with torch.no_grad():
        weight_view(get_module(model, ffn.output))[:, 3] = 5e-5  # out-degree 0 after the threshold
        for name in ffn.inputs:  # in-degree 0 (BERT keeps it: its W1 bias makes a constant)
            weight_view(get_module(model, name))[7] = 0.0
        weight_view(get_module(model, ffn.inputs[-1]))[9] = 0.0  # llama: an empty up row alone kills neuron 9
        weight_view(get_module(model, topo.blocks[0].attention.q))[0, :5] = -1e-4
    masks = method.finalize(model)
    assert bool((weight_view(get_module(model, topo.blocks[0].attention.q))[0, :5] == 0).all())
    neurons = masks.layers[1].neurons
    dead = {3, 7, 9} if family == "llama" else {3}
    assert {i for i in range(48) if not neurons[i]} == dead
    check_equal(model, masks, tiny_inputs(family))
    report = method.final_report
    assert report["neurons_kept"] == 3 * 48 - len(dead) and "target_reached" not in report
    assert report["degree_std"] > 0 and sum(report["degree_histogram"]["counts"]) == 3 * 48 - len(dead)
    (path,) = method.save_plots(tmp_path / "plots")
    assert path.name == "degree_histogram.png" and path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_target_mode_is_exact_after_finalize(family):
    model = tiny_model(family)
    topo = describe(model)
    method = create_method("neuroprune", {"alpha": 1e-3, "target_sparsity": 0.6, "theta": 1e6, "penalty": "loss"})
    method.attach(model, topo)
    logs = _steps(model, method, family, range(1, 6), total=5)
    assert logs[-1]["near_zero_goal"] == pytest.approx(0.6) and logs[-1]["reg_scale"] > 1.0  # raised: below goal
    method.on_epoch_end(0)  # theta huge: one KV group per layer stays
    ffn = topo.blocks[0].ffn
    with torch.no_grad():  # a neuron the cut keeps in W1 but whose W2 column dies: structure takes extra weights
        weight_view(get_module(model, ffn.output))[:, 0] = 1e-6
        for name in ffn.inputs:
            weight_view(get_module(model, name))[0] = 10.0
    masks = method.finalize(model)
    weights = [weight_view(get_module(model, n)) for n in topo.prunable_linears()]
    total = sum(w.numel() for w in weights)
    assert sum(int(torch.count_nonzero(w)) for w in weights) == kept_count(total, 0.6)
    assert method.final_report["target_reached"] and not bool(masks.layers[0].neurons[0])
    check_equal(model, masks, tiny_inputs(family))
    compact(model, masks)
    small = describe(model)
    assert sum(int(torch.count_nonzero(weight_view(get_module(model, n)))) for n in small.prunable_linears()) == (
        kept_count(total, 0.6)
    )
    assert all(b.attention.num_heads == topo.blocks[0].attention.group_size for b in small.blocks)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_proximal_target_mode_follows_the_schedule(family):
    """The pull tracks the cubic schedule without passing it (a step's pull is cut at the goal's quantile; only
    units dying that step add a little), dead units are zeroed as they die, and the end lands on the target."""
    model = tiny_model(family)
    topo = describe(model)
    method = create_method("neuroprune", {"target_sparsity": 0.6})
    method.attach(model, topo)
    logs = _steps(model, method, family, range(1, 21), total=20, lr=1e-3)
    assert all(r["near_zero"] <= r["near_zero_goal"] + 0.005 for r in logs)
    assert logs[-1]["near_zero"] >= 0.6 - 0.005  # reached by `end` (0.7) and held
    dead = method._structure(model)
    for name, (keep, _) in element_masks(model, dead, topo).items():  # nothing dead keeps a non-zero weight
        assert not bool(weight_view(get_module(model, name))[~keep].any()), name
    masks = method.finalize(model)
    assert method.final_report["sparsity"] == pytest.approx(0.6, abs=0.005)
    check_equal(model, masks, tiny_inputs(family))
    nonzero = method.final_report["nonzero_weights"]
    compact(model, masks)
    assert (
        sum(int(torch.count_nonzero(weight_view(get_module(model, n)))) for n in describe(model).prunable_linears())
        == nonzero
    )


@pytest.mark.parametrize("penalty", ["loss", "proximal"])
def test_controller_lowers_the_scale_above_the_schedule(penalty):
    model = tiny_model("bert")
    method = create_method("neuroprune", {"target_sparsity": 0.5, "start": 0.5, "penalty": penalty})
    method.attach(model, describe(model))
    scale = method.scale
    assert (scale == 1.0) == (penalty == "loss")  # proximal: starts from the target quantile of |w| / (omega m)
    with torch.no_grad():
        for name in method.topo.prunable_linears():
            weight_view(get_module(model, name))[:, ::2] = 0.0  # already half zero
    before = {n: weight_view(get_module(model, n)).clone() for n in method.topo.prunable_linears()}
    method.on_step(2, 10)  # before start: untouched
    assert method.scale == scale
    method.on_step(6, 10)  # goal 0.5 * (1 - 0.5^3) = 0.4375 < 0.5 measured: lower
    assert method.scale == pytest.approx(scale / 1.02)
    # above the schedule the proximal step pulls nothing new (it only holds): what changed is dead structure
    # (neurons whose W2 column the test zeroed), zeroed whole
    dead = element_masks(model, method._structure(model), method.topo)
    for n, w in before.items():
        now = weight_view(get_module(model, n))
        changed = now != w
        assert not bool(now[changed].any()) and not bool((changed & dead[n][0]).any()), n


# ---------------------------------------------------------------- state


def resumed_twin(model, method):
    """A copy of `model` with a fresh method restored from `method`'s saved state (through torch.save /
    torch.load) and the test optimizer's state: what a resumed run starts from."""
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    twin_model = copy.deepcopy(model)
    twin = create_method("neuroprune", method.config.model_dump())
    twin.attach(twin_model, describe(twin_model))
    twin.load_state_dict(state)
    twin._test_opt = torch.optim.AdamW(twin_model.parameters(), lr=1e-2, weight_decay=0.0)
    twin._test_opt.load_state_dict(copy.deepcopy(method._test_opt.state_dict()))  # (shares tensors otherwise)
    return twin_model, twin


def test_state_round_trip_and_identical_continuation():
    model = tiny_model("llama")
    method = create_method("neuroprune", {"target_sparsity": 0.5, "degree_refresh_steps": 2, "theta": 1e6})
    method.attach(model, describe(model))
    _steps(model, method, "llama", range(1, 4))
    method.on_epoch_end(0)
    _steps(model, method, "llama", range(4, 6))
    twin_model, twin = resumed_twin(model, method)
    assert twin.scale == method.scale != 1.0 and twin.refreshed_at == method.refreshed_at == 4
    assert twin.merges == method.merges and len(method.merges) == 3 * 2
    for a, b in ((method.c_in, twin.c_in), (method.c_out, twin.c_out), (method.heads, twin.heads)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _steps(model, method, "llama", range(6, 9))
    _steps(twin_model, twin, "llama", range(6, 9))
    for (k, v), (_, v2) in zip(model.state_dict().items(), twin_model.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k


@pytest.mark.parametrize(
    "config,message",
    [
        ({"weighting": "square"}, "weighting"),
        ({"theta_mode": "percent"}, "theta_mode"),
        ({"target_sparsity": 1.2}, "target_sparsity"),
        ({"alpha": -1}, "alpha"),
        ({"start": 0.8, "end": 0.2}, "end"),
        ({"gamma": 1}, "unknown key 'gamma'"),
    ],
)
def test_bad_config(config, message):
    with pytest.raises(UsageError, match=message):
        create_method("neuroprune", config)


# ---------------------------------------------------------------- under the real trainer


@pytest.mark.parametrize("penalty", ["loss", "proximal"])
def test_trainer_run_resumes_identically_and_logs(tmp_path, penalty):
    from prunekit.catalog import load_model
    from prunekit.tasks import get_task, load_data
    from prunekit.train.config import TrainConfig
    from prunekit.train.loop import Trainer
    from train_fixtures import sentiment_csv, tiny_bert_dir

    model_dir = tiny_bert_dir(tmp_path)
    data, kind = load_data(
        str(sentiment_csv(tmp_path, n=120)), task="classification", columns={"text": "review", "label": "verdict"}
    )
    task = get_task(kind)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, max_length=16, checkpoint_every=4, log_every=1)
    spec = {"alpha": 1e-3, "beta": 1e-3, "weighting": "inverse", "theta": 1e6, "penalty": penalty}
    if penalty == "proximal":  # target mode: the controller's state (scale, last zeros) is in the checkpoint
        spec |= {"target_sparsity": 0.5}

    def fresh(work):
        model, tok = load_model(str(model_dir), num_labels=2)
        return Trainer(model, tok, task, data, method=create_method("neuroprune", spec), config=cfg, work_dir=work,
                       progress=False)  # fmt: skip

    full_trainer = fresh(tmp_path / "a")
    full = full_trainer.fit()
    fresh(tmp_path / "b").fit(stop_after=8)  # killed after the first epoch's head step
    resumed_trainer = fresh(tmp_path / "b")
    resumed = resumed_trainer.fit(resume=True)
    for (k, v), (_, v2) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k
    assert resumed_trainer.method.merges == full_trainer.method.merges != []
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    terms = {"ffn_reg", "att_reg"} if penalty == "loss" else {"shrink", "reg_scale", "near_zero_goal"}
    assert terms | {"near_zero", "degree_std", "heads_kept"} <= set(train[-1])
    assert train[-1]["heads_kept"] == 2  # one head per layer left after the head step
    masks = full_trainer.method.finalize(full.model)
    check_equal(full.model, masks, {"input_ids": torch.randint(5, 100, (2, 9))})
