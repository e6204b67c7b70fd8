"""NAS structural pruning (METHODS.md 4) on tiny models: spaces, reordering, masked forwards, costs, Pareto
utilities, searchers, baselines and the super-network method."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from prunekit.bench import count_parameters, flops_per_token
from prunekit.compact.remove import validate
from prunekit.core.errors import UsageError
from prunekit.importance.gates import GateHooks
from prunekit.methods.nas import reorder
from prunekit.methods.nas.cost import compacted_copy, subnet_flops, subnet_parameters
from prunekit.methods.nas.pareto import dominates, hypervolume, nondominated_ranks, pareto_mask
from prunekit.methods.nas.space import SPACES, LayerShape, MediumSpace, make_space
from prunekit.topology import describe
from prunekit.topology.families import Family
from tiny import FAMILIES, tiny_inputs, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is ~100x faster than several contending for a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------ Pareto front and hypervolume


def _brute_front(p: np.ndarray) -> np.ndarray:
    return np.array([not any(dominates(q, x) for q in p) for x in p])


def _brute_hv(p: np.ndarray, ref: np.ndarray) -> float:
    """Union of the boxes [point, ref] by coordinate compression: every grid cell counted once."""
    p = p[(p < ref).all(1)]
    if not len(p):
        return 0.0
    axes = [np.unique(np.append(p[:, k], ref[k])) for k in range(p.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([a[i] for a, i in zip(axes, cell, strict=True)])
        hi = np.array([a[i + 1] for a, i in zip(axes, cell, strict=True)])
        if (p <= lo).all(1).any():
            total += float(np.prod(hi - lo))
    return total


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_front_and_hypervolume_match_brute_force_and_optuna(dims, seed):
    from optuna._hypervolume import compute_hypervolume
    from optuna.study._multi_objective import _fast_non_domination_rank, _is_pareto_front

    rng = np.random.default_rng(seed)
    p = rng.integers(0, 6, size=(25, dims)).astype(float) / 6  # a coarse grid: ties and duplicates
    front = pareto_mask(p)
    assert front.any() and not front.all()
    assert (front == _brute_front(p)).all()
    assert (front == _is_pareto_front(p, assume_unique_lexsorted=False)).all()
    assert (nondominated_ranks(p) == _fast_non_domination_rank(p)).all()
    ref = np.full(dims, 1.1)
    hv = hypervolume(p, ref)
    assert hv == pytest.approx(_brute_hv(p, ref), rel=1e-12)
    assert hv == pytest.approx(compute_hypervolume(p[front], ref, assume_pareto=True), rel=1e-12)
    assert hv == pytest.approx(hypervolume(p[front], ref))  # dominated points add nothing
    assert hypervolume(p, np.zeros(dims)) == 0.0  # nothing better than the reference


def test_hypervolume_of_known_sets():
    assert hypervolume([[0.5, 0.5]], [1, 1]) == pytest.approx(0.25)
    assert hypervolume([[0.0, 0.5], [0.5, 0.0]], [1, 1]) == pytest.approx(0.75)
    assert hypervolume([[0.2, 0.2, 0.2]], [1, 1, 1]) == pytest.approx(0.512)


# ------------------------------------------------------------------ search spaces


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("space_name", list(SPACES))
def test_spaces_sample_only_valid_configurations(family, space_name):
    model = tiny_model(family)
    topo = describe(model)
    space = make_space(space_name, topo)
    rng = np.random.default_rng(0)
    full = space.full()
    assert space.masks(full).layers and all(lm.is_empty() for lm in space.masks(full).layers.values())
    designs = space.initial(["full", "smallest", "midpoint"])
    assert len(designs) == 3 and len(set(designs)) == 3
    for c in designs + [space.sample(rng) for _ in range(6)]:
        assert space.contains(c) and all(type(x) is int for x in c)
        n = space.neighbour(c, rng)
        assert space.contains(n) and sum(a != b for a, b in zip(c, n, strict=True)) == 1
        masks = space.masks(c)
        validate(masks, topo)
        small = compacted_copy(model, masks)  # grouped-query attention would refuse uneven groups here
        heads = space.summary(c)["heads"]
        got = [b.attention.num_heads if b.attention else 0 for b in describe(small).blocks]
        assert got == heads
    assert not space.contains(tuple(x + 1 for x in space.highs))
    with pytest.raises(UsageError, match="search space"):
        space.masks((0,))


def test_unknown_space_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown search space 'huge': use one of small, medium, layer, large"):
        make_space("huge", describe(tiny_model("bert")))


def _logits(model, x):
    with torch.no_grad():
        return model(**x).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("space_name", list(SPACES))
def test_masked_supernet_equals_compacted_subnet_and_every_mask_acts(family, space_name):
    """Each sampled configuration changes the output (no mask silently dropped), the masked forward equals the
    compacted sub-network, and the costs computed from the masks equal the compacted model's."""
    model = tiny_model(family)
    topo = describe(model)
    x = tiny_inputs(family)
    space = make_space(space_name, topo)
    rng = np.random.default_rng(1)
    ref = _logits(model, x)
    gates = GateHooks(model, topo)
    configs = [space.smallest(), space.midpoint()] + [space.sample(rng) for _ in range(4)]
    for c in configs:
        gates.set(space.masks(c))
        masked = _logits(model, x)
        gates.set(None)
        assert torch.equal(_logits(model, x), ref)  # back to the full network
        if c != space.full():
            assert (masked - ref).abs().max() > 1e-4, c
        gates.remove()
        small = compacted_copy(model, space.masks(c))
        gates.attach()
        torch.testing.assert_close(_logits(small, x), masked, atol=1e-4, rtol=1e-4)
        assert subnet_parameters(model, space.masks(c)) == count_parameters(small)["total"]
        assert subnet_flops(model, space.masks(c), 16) == pytest.approx(flops_per_token(small, 16)["total"])
    gates.remove()


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_one_partial_head_mask_changes_the_output(family):
    """The public code dropped partial head masks: removing a single head unit of one layer must act."""
    model = tiny_model(family)
    topo = describe(model)
    space = make_space("medium", topo)
    x = tiny_inputs(family)
    ref = _logits(model, x)
    gates = GateHooks(model, topo)
    for layer in range(topo.num_layers):
        c = list(space.full())
        c[layer] -= 1  # one head unit fewer in this layer only
        gates.set(space.masks(tuple(c)))
        assert (_logits(model, x) - ref).abs().max() > 1e-4, layer
        c = list(space.full())
        c[topo.num_layers + layer] -= 1  # one neuron fewer
        gates.set(space.masks(tuple(c)))
        assert (_logits(model, x) - ref).abs().max() > 1e-5, layer
    gates.remove()


def test_parameter_count_of_a_bert_base_subnetwork_by_formula():
    """bert-base-cased dimensions: the full network has 108,311,810 parameters (METHODS.md 4e); a sub-network
    with h heads and n neurons per layer loses exactly what the per-head / per-neuron formula says."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=28996, num_labels=2)
    with torch.device("meta"):
        model = BertForSequenceClassification(cfg)
    space = make_space("small", describe(model))
    assert subnet_parameters(model, space.masks(space.full())) == 108_311_810
    h, n, d, dh = 5, 1000, 768, 64
    layer = 3 * h * dh * (d + 1) + d * h * dh + d + 2 * d + n * (d + 1) + d * n + d + 2 * d
    assert subnet_parameters(model, space.masks((12, h, n))) == 108_311_810 - 85_054_464 + 12 * layer
    dropped = subnet_parameters(model, space.masks((9, 12, 3072)))
    assert dropped == 108_311_810 - 3 * 85_054_464 // 12


# ------------------------------------------------------------------ importance and reordering


def _scores(topo, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = {b.index: torch.rand(b.attention.num_heads, generator=g) for b in topo.blocks}
    ns = {b.index: torch.rand(b.ffn.width, generator=g) for b in topo.blocks}
    return hs, ns


@pytest.mark.parametrize("family", FAMILIES)
def test_permutation_leaves_outputs_unchanged(family):
    model = tiny_model(family)
    topo = describe(model)
    x = tiny_inputs(family)
    ref = _logits(model, x)
    order = reorder.order_from_scores(topo, *_scores(topo))
    assert any(not torch.equal(p, torch.arange(p.numel())) for p in order.heads + order.neurons)
    permuted = copy.deepcopy(model)
    reorder.permute(permuted, topo, order)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, permuted.state_dict()[k])]
    assert len(changed) >= 2 * topo.num_layers  # the weights really moved
    torch.testing.assert_close(_logits(permuted, x), ref, atol=2e-5, rtol=1e-5)
    reorder.unpermute(permuted, topo, order)
    assert permuted.state_dict().keys() == model.state_dict().keys()  # no index left behind (MPNet)
    for k, v in model.state_dict().items():
        assert torch.equal(v, permuted.state_dict()[k]), k


def test_mpnet_permutation_needs_the_position_bias_index(monkeypatch):
    """Without selecting the shared relative-position bias per head, a permuted MPNet layer computes something
    else: the check above would catch a missing index."""
    model = tiny_model("mpnet")
    topo = describe(model)
    x = tiny_inputs("mpnet")
    ref = _logits(model, x)
    monkeypatch.setattr(Family, "heads_kept", lambda self, core, kept, permutation=False: None)
    reorder.permute(model, topo, reorder.order_from_scores(topo, *_scores(topo)))
    assert (_logits(model, x) - ref).abs().max() > 1e-3


def test_grouped_query_permutation_moves_whole_groups():
    model = tiny_model("llama")  # 4 query heads, 2 KV heads
    topo = describe(model)
    order = reorder.order_from_scores(topo, *_scores(topo))
    for perm in order.heads:
        reorder.check_group_order(perm, 2)
    with pytest.raises(ValueError, match="whole KV groups"):
        reorder.check_group_order(torch.tensor([0, 2, 1, 3]), 2)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_prefix_after_reordering_keeps_the_most_important_units(family):
    """The extraction path: masks over reordered units, mapped back, on the model in its original order."""
    model = tiny_model(family)
    topo = describe(model)
    x = tiny_inputs(family)
    hs, ns = _scores(topo, seed=3)
    order = reorder.order_from_scores(topo, hs, ns)
    permuted = copy.deepcopy(model)
    reorder.permute(permuted, topo, order)
    space = make_space("small", topo)
    c = (topo.num_layers, 1, 5)  # the most important head unit and 5 neurons per layer
    original = reorder.to_original(space.masks(c), order)
    for b in topo.blocks:
        assert torch.equal(original.layers[b.index].neurons, ns[b.index] >= ns[b.index].topk(5).values.min())
        unit = hs[b.index].view(b.attention.num_kv_heads, -1).sum(1).argmax()
        g = b.attention.group_size
        assert original.layers[b.index].heads.nonzero().flatten().tolist() == list(range(unit * g, unit * g + g))
    gates = GateHooks(permuted, topo)
    gates.set(space.masks(c))
    masked = _logits(permuted, x)
    gates.remove()
    torch.testing.assert_close(_logits(compacted_copy(model, original), x), masked, atol=1e-4, rtol=1e-4)


def test_importance_is_zero_for_units_that_contribute_nothing():
    from prunekit.topology import get_module, weight_view

    model = tiny_model("bert")
    topo = describe(model)
    b = topo.blocks[1]
    with torch.no_grad():
        weight_view(get_module(model, b.attention.o))[:, 8:16] = 0  # head 1 of layer 1 writes nothing
        weight_view(get_module(model, b.ffn.output))[:, 7] = 0  # neuron 7 of layer 1 writes nothing
    x = tiny_inputs("bert") | {"labels": torch.tensor([0, 2])}
    hs, ns = reorder.importance(model, topo, [x, x])
    assert hs[1][1] == 0 and (hs[1][[0, 2, 3]] > 0).all() and (hs[0] > 0).all()
    assert ns[1][7] == 0 and (ns[1] > 0).sum() >= ns[1].numel() - 2
    order = reorder.order_from_scores(topo, hs, ns)
    assert order.heads[1][-1] == 1 and order.neurons[1][-1] == 7  # least important last


# ------------------------------------------------------------------ searchers


def _toy_problem():
    """A cheap 2-objective problem over a medium space: error falls with kept units, cost rises."""
    from prunekit.methods.nas.search import Evaluation, Problem

    space = MediumSpace([LayerShape(4, 1, 6), LayerShape(4, 1, 6)])

    def fn(c):
        kept = np.asarray(c, float) / space.highs
        w = np.array([3, 1, 2, 1])
        err = float(np.exp(-(w * kept).sum()))
        return Evaluation(c, (err, float(kept.mean())), {"kept": kept.tolist()})

    return space, Problem(fn)


@pytest.mark.parametrize("searcher", ["random", "local", "morea", "nsga2"])
def test_searchers_spend_the_budget_on_distinct_valid_configurations(searcher):
    from prunekit.methods.nas.search import front, multi_objective_search

    space, problem = _toy_problem()
    initial = space.initial(["full", "smallest", "midpoint"])
    evals = multi_objective_search(searcher, space, problem, budget=30, seed=0, initial=initial)
    configs = [e.config for e in evals]
    assert len(configs) == len(set(configs)) and 25 <= len(configs) <= 30
    assert configs[:3] == initial and all(space.contains(c) for c in configs)
    f = front(evals)
    assert f and all(not any(dominates(o.objectives, e.objectives) for o in evals) for e in f)
    again = multi_objective_search(searcher, space, _toy_problem()[1], budget=30, seed=0, initial=initial)
    assert [e.config for e in again] == configs  # seeded


def test_local_search_and_morea_propose_neighbours():
    from prunekit.methods.nas.search import multi_objective_search

    for searcher in ("local", "morea"):
        space, problem = _toy_problem()
        evals = multi_objective_search(
            searcher, space, problem, budget=25, seed=1, initial=space.initial(["full", "smallest"])
        )
        start = 12 if searcher == "morea" else 2  # MO-REA fills its population (10) with samples first
        near = [
            any(sum(a != b for a, b in zip(e.config, o.config, strict=True)) == 1 for o in evals[:i])
            for i, e in enumerate(evals)
        ][start:]
        assert sum(near) >= 0.9 * len(near), searcher


def test_budget_larger_than_the_space_stops():
    from prunekit.methods.nas.search import Evaluation, Problem, multi_objective_search

    space = MediumSpace([LayerShape(1, 1, 2)])  # 2 x 3 configurations
    for searcher in ("random", "local", "morea"):
        problem = Problem(lambda c: Evaluation(c, (float(-sum(c)), float(sum(c)))))
        evals = multi_objective_search(searcher, space, problem, budget=50, seed=0, initial=[space.full()])
        assert len(evals) == 6


def test_nsga2_processes_share_one_study_through_storage(tmp_path):
    from prunekit.methods.nas.search import multi_objective_search

    url = f"sqlite:///{tmp_path / 'study.db'}"
    space, first = _toy_problem()
    initial = space.initial(["full", "smallest", "midpoint"])
    a = multi_objective_search("nsga2", space, first, budget=12, seed=0, initial=initial, storage=url, study_name="s")
    _, second = _toy_problem()
    b = multi_objective_search("nsga2", space, second, budget=20, seed=1, initial=initial, storage=url, study_name="s")
    assert len(a) == 12 and len(second.history) == 8  # the second process only spends what is left
    assert {e.config for e in a} <= {e.config for e in b} and len(b) >= 18
    import optuna

    assert len(optuna.load_study(study_name="s", storage=url).trials) == 20


def test_unknown_searcher_is_a_usage_error():
    from prunekit.methods.nas.search import multi_objective_search

    space, problem = _toy_problem()
    with pytest.raises(UsageError, match="unknown searcher 'grid': use one of random, local, nsga2, morea"):
        multi_objective_search("grid", space, problem, budget=3, seed=0, initial=[])


# ------------------------------------------------------------------ baselines


def test_baselines_remove_what_they_say():
    from prunekit.methods.nas import baselines

    model = tiny_model("bert")  # 3 layers x 4 heads
    topo = describe(model)
    x = tiny_inputs("bert") | {"labels": torch.tensor([0, 1])}
    heads = baselines.michel_heads(model, topo, lambda: [x], [0.25, 0.5])
    assert [sum(int(lm.heads.sum()) for lm in m.layers.values()) for m in heads.values()] == [9, 6]
    assert all((heads[0.5].layers[i].heads <= heads[0.25].layers[i].heads).all() for i in range(3))  # nested
    dropped = baselines.drop_layers(topo, [0.5])[0.5]
    assert sorted(i for i, lm in dropped.layers.items() if lm.drop_attention and lm.drop_ffn) == [1, 2]
    mag = baselines.magnitude(model, topo, [0.5])[0.5]
    assert all(int(lm.heads.sum()) == 2 and int(lm.neurons.sum()) == 24 for lm in mag.layers.values())


# ------------------------------------------------------------------ the super-network method


def _nas(strategy: str, family: str = "bert", **cfg):
    from prunekit.methods.base import create_method

    model = tiny_model(family).train()
    for m in model.modules():  # no dropout: compare forwards exactly
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    method = create_method("nas", {"strategy": strategy, "space": "medium", **cfg})
    method.attach(model, describe(model))
    return model, method


@pytest.mark.parametrize(
    ("strategy", "kinds"),
    [
        ("standard", ["full"]),
        ("random", ["labels"]),
        ("sandwich", ["full", "labels", "labels", "labels"]),
        ("kd", ["full", "distill", "distill"]),
        ("full", ["full", "distill", "distill", "distill"]),
    ],
)
def test_strategies_plan_their_sub_networks(strategy, kinds):
    model, method = _nas(strategy)
    plan = method.plan(3)
    assert [k for k, _ in plan] == kinds
    assert [k for k, _ in method.plan(3)] == kinds and method.plan(3) is plan
    if strategy in ("sandwich", "full"):
        smallest = method.space.masks(method.space.smallest())
        last = plan[-1][1].layers.values()
        assert all(torch.equal(a.neurons, b.neurons) for a, b in zip(last, smallest.layers.values(), strict=True))
    x = tiny_inputs("bert") | {"labels": torch.tensor([0, 1])}
    out = model(**x)
    terms = method.loss_terms(model, x, out)
    expected = {"sub_random"} if len(kinds) > 1 else set()
    if strategy in ("sandwich", "full"):
        expected.add("sub_smallest")
    assert set(terms) == expected
    if terms:
        sum(terms.values()).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_random_linear_moves_from_full_to_random():
    _, method = _nas("random_linear")
    method.on_step(0, 100)
    assert all(method.plan(s)[0][0] == "full" for s in [0])
    method.on_step(100, 100)
    assert method.plan(100)[0][0] == "labels"
    kinds = [method.plan(s)[0][0] for s in range(0, 100)]
    assert 20 < kinds.count("labels") < 80


def test_trainer_forward_runs_the_step_sub_network_and_evaluation_the_full_one():
    model, method = _nas("random", num_random=1)
    x = tiny_inputs("bert")
    method.on_step(5, 10)
    masks = method.plan(5)[0][1]
    train_out = model(**x).logits
    with method.use(masks):
        model.eval()
        forced = model(**x).logits
        model.train()
    torch.testing.assert_close(train_out, forced)
    model.eval()
    full = model(**x).logits
    with method.detached():
        plain = model(**x).logits
    torch.testing.assert_close(full, plain)
    assert (full - train_out).abs().max() > 1e-4
    method.load_state_dict(method.state_dict() | {"step": 7})
    assert method._step == 7
    with pytest.warns(UserWarning, match="super-network only"):
        assert method.finalize(model) is None
    torch.testing.assert_close(model.train()(**x).logits, plain)  # hooks gone: the plain super-network


def test_bad_strategy_is_a_usage_error():
    from prunekit.methods.base import create_method

    with pytest.raises(UsageError, match="unknown training strategy 'greedy'"):
        create_method("nas", {"strategy": "greedy"})


def test_in_place_distillation_is_t2_kl_to_the_full_networks_logits():
    import torch.nn.functional as F

    model, method = _nas("kd", num_random=1, temperature=2.0)
    x = tiny_inputs("bert") | {"labels": torch.tensor([0, 1])}
    full = model(**x)
    full.logits.retain_grad()
    terms = method.loss_terms(model, x, full)
    ((_, masks),) = method.plan(0)[1:]
    with method.use(masks):
        sub = model(**x).logits
    t = F.softmax(full.logits.detach() / 2, -1)
    expected = 4 * (t * (t.log() - F.log_softmax(sub / 2, -1))).sum(-1).mean()
    torch.testing.assert_close(terms["sub_random"], expected)
    terms["sub_random"].backward()
    assert full.logits.grad is None  # no gradient reaches the teacher side (the full network's logits)


def test_sub_networks_are_a_function_of_seed_and_step():
    _, a = _nas("sandwich", seed=3)
    _, b = _nas("sandwich", seed=3)
    _, c = _nas("sandwich", seed=4)

    def heads(method, step):
        return [torch.cat([lm.heads for lm in m.layers.values()]).tolist() for _, m in method.plan(step)[1:]]

    assert heads(a, 11) == heads(b, 11)  # a resumed run trains the same sub-networks
    assert heads(a, 11) != heads(c, 11) and heads(a, 11) != heads(a, 12)


def test_quality_objective_is_a_fraction_whatever_the_metric():
    from prunekit.pipelines.search import _error

    assert _error(0.8, 0.9, True) == pytest.approx(0.2)  # accuracy
    assert _error(80.0, 90.0, True, 100.0) == pytest.approx(0.2)  # SQuAD F1, ROUGE: percent
    assert _error(20.0, 10.0, False) == pytest.approx(0.5)  # perplexity twice the dense model's
    assert _error(10.0, 10.0, False) == 0.0
