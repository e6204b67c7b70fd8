"""Selection under a latency budget (`importance.allocate`) and the costs it spends (`prunekit.costs`): the budget is
met, no more is removed than it needs, the units that go are the cheapest in score per millisecond saved, and
scores of different kinds are only compared where they mean the same thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from prunekit.core.errors import UsageError
from prunekit.costs import line_through_origin, measure_unit_costs, read_unit_costs
from prunekit.importance import UnitScores, unit_scores
from prunekit.importance.allocate import CostCurve, UnitCosts, allocate
from prunekit.topology import describe
from tiny import tiny_inputs, tiny_model


def _scores(topo, criterion: str = "taylor", seed: int = 0, head_scale: float = 1.0) -> UnitScores:
    g = torch.Generator().manual_seed(seed)
    heads = {b.index: torch.rand(b.attention.num_heads, generator=g) * head_scale for b in topo.blocks}
    neurons = {b.index: torch.rand(b.ffn.width, generator=g) for b in topo.blocks}
    return UnitScores(heads, neurons, criterion, 1)


def _costs(heads_all: float = 30.0, neurons_all: float = 50.0, curved: bool = False) -> UnitCosts:
    """dense 100 ms; removing every head saves `heads_all`, every neuron `neurons_all` (linear, or concave)."""
    bend = (lambda f: f**0.5) if curved else (lambda f: f)  # noqa: E731
    pts = [0.0, 0.25, 0.5, 0.75]
    return UnitCosts(100.0, CostCurve(pts, [heads_all * bend(f) for f in pts]),
                     CostCurve(pts, [neurons_all * bend(f) for f in pts]))  # fmt: skip


def _predicted(topo, masks, costs: UnitCosts) -> float:
    """Latency from the masks alone: each layer saves its share of the kind's curve at its removed fraction."""
    latency = costs.dense_ms
    n_layers = len(topo.blocks)
    for b in topo.blocks:
        lm = masks.layers.get(b.index)
        for kept, curve in ((lm.heads if lm else None, costs.heads), (lm.neurons if lm else None, costs.neurons)):
            if kept is not None:
                latency -= curve.at(1 - float(kept.float().mean())) / n_layers
    return latency


@pytest.mark.parametrize("speedup", [1.1, 1.4, 1.8])
@pytest.mark.parametrize("curved", [False, True])
def test_allocation_meets_the_latency_budget_and_removes_no_more_than_it_needs(speedup, curved):
    topo = describe(tiny_model("bert"))
    costs = _costs(curved=curved)
    masks, predicted = allocate(topo, _scores(topo), costs, speedup)
    assert predicted == pytest.approx(_predicted(topo, masks, costs), rel=1e-6)
    assert predicted <= costs.dense_ms / speedup + 1e-9
    # the last unit removed was needed: with it kept, the prediction misses the budget
    removed = sum(int((~m).sum()) for lm in masks.layers.values() for m in (lm.heads, lm.neurons) if m is not None)
    fewer, _ = allocate(topo, _scores(topo), costs, 1.0)  # nothing removed at 1x
    assert all(bool(m.all()) for lm in fewer.layers.values() for m in (lm.heads, lm.neurons) if m is not None)
    assert removed > 0
    biggest_unit = max(costs.heads.saved[-1] / 0.75 / 12, costs.neurons.saved[-1] / 0.75 / 144)
    if not curved:
        assert predicted > costs.dense_ms / speedup - biggest_unit - 1e-9


def test_the_units_removed_are_the_cheapest_in_score_per_millisecond():
    topo = describe(tiny_model("bert"))
    costs, scores = _costs(), _scores(topo)
    masks, _ = allocate(topo, scores, costs, 1.5, min_heads=0, min_neurons=0)
    per_head = costs.heads.saved[-1] / 0.75 / (4 * 3)  # linear curves: every unit of a kind saves the same
    per_neuron = costs.neurons.saved[-1] / 0.75 / (48 * 3)
    price_gone, price_kept = [], []
    for b in topo.blocks:
        lm = masks.layers[b.index]
        for kept, s, per in ((lm.heads, scores.heads[b.index], per_head), (lm.neurons, scores.neurons[b.index],
                                                                             per_neuron)):  # fmt: skip
            price_gone += (s[~kept] / per).tolist()
            price_kept += (s[kept] / per).tolist()
    assert price_gone and max(price_gone) <= min(price_kept) + 1e-9


def test_heads_that_cost_more_latency_go_before_equally_scored_neurons():
    topo = describe(tiny_model("bert"))
    scores = UnitScores({b.index: torch.ones(4) for b in topo.blocks}, {b.index: torch.ones(48) for b in topo.blocks},
                        "taylor", 1)  # fmt: skip

    def removed(masks, kind: str) -> int:
        return sum(int((~getattr(lm, kind)).sum()) for lm in masks.layers.values())

    masks, _ = allocate(topo, scores, _costs(heads_all=60.0, neurons_all=20.0), 1.2)
    assert removed(masks, "heads") == 4 and removed(masks, "neurons") == 0  # 5 ms a head, 16.7 ms to save
    masks, _ = allocate(topo, scores, _costs(heads_all=5.0, neurons_all=80.0), 1.2)
    assert removed(masks, "heads") == 0 and removed(masks, "neurons") == 30  # 0.56 ms a neuron, 0.42 a head


def test_scores_of_different_kinds_are_compared_only_where_they_mean_the_same():
    topo = describe(tiny_model("bert"))
    costs = _costs()

    def heads_removed(criterion: str, scale: float) -> int:
        masks, _ = allocate(topo, _scores(topo, criterion, head_scale=scale), costs, 1.3)
        return sum(int((~lm.heads).sum()) for lm in masks.layers.values())

    # activation: a head's norm and a neuron's activation are different quantities; their scale must not matter
    assert heads_removed("activation", 1.0) == heads_removed("activation", 1000.0)
    # taylor: both are loss changes; heads 1000x as important are kept
    assert heads_removed("taylor", 1000.0) < heads_removed("taylor", 1.0)


def test_minimums_hold_and_an_unreachable_speedup_is_one_clear_error():
    topo = describe(tiny_model("bert"))
    masks, _ = allocate(topo, _scores(topo), _costs(), 2.0, min_heads=2, min_neurons=8)
    assert all(int(lm.heads.sum()) >= 2 and int(lm.neurons.sum()) >= 8 for lm in masks.layers.values())
    with pytest.raises(UsageError, match="out of reach.*lower the speedup"):
        allocate(topo, _scores(topo), _costs(heads_all=10.0, neurons_all=10.0), 3.0)


def test_grouped_query_attention_keeps_the_same_heads_per_kv_group():
    topo = describe(tiny_model("llama"))
    g = torch.Generator().manual_seed(1)
    scores = UnitScores({b.index: torch.rand(4, generator=g) for b in topo.blocks},
                        {b.index: torch.rand(48, generator=g) for b in topo.blocks}, "taylor", 1)  # fmt: skip
    masks, _ = allocate(topo, scores, _costs(heads_all=80.0, neurons_all=5.0), 1.3)
    for lm in masks.layers.values():
        per_group = lm.heads.view(2, 2).sum(1)
        assert per_group[0] == per_group[1]


def test_the_fitted_line_is_the_least_squares_one_and_never_negative():
    r = [0.0, 0.25, 0.5, 0.75]
    exact = line_through_origin(r, [0.0, 10.0, 20.0, 30.0])
    assert exact.at(0.5) == pytest.approx(20.0) and exact.at(1.0) == pytest.approx(40.0)
    noisy = line_through_origin(r, [0.0, 12.0, 17.0, 33.0])
    slope = noisy.at(1.0)
    sse = lambda a: sum((a * x - y) ** 2 for x, y in zip(r, [0.0, 12.0, 17.0, 33.0], strict=True))  # noqa: E731
    assert sse(slope) < sse(slope * 1.01) and sse(slope) < sse(slope * 0.99)  # a minimum
    assert line_through_origin(r, [0.0, -3.0, -1.0, -2.0]).at(1.0) == 0.0  # noise that says "slower" saves nothing


def test_a_bend_in_the_measured_points_does_not_empty_whole_layers():
    """Layers alike in score must lose alike: with the raw points of a convex measurement (the first quarter of a
    kind saves little, the rest much) the greedy piles the cut into a few layers; with the fitted line it spreads."""
    topo = describe(tiny_model("bert"))
    scores = UnitScores({b.index: torch.linspace(10.0, 100.0, 4) for b in topo.blocks},
                        {b.index: torch.linspace(0.1, 1.0, 48) for b in topo.blocks}, "taylor", 1)  # fmt: skip
    pts = [0.0, 0.25, 0.5, 0.75]
    bent = {"heads": [0.0, 0.5, 1.0, 20.0], "neurons": [0.0, 1.0, 30.0, 45.0]}
    raw = UnitCosts(100.0, CostCurve(pts, bent["heads"]), CostCurve(pts, bent["neurons"]))
    fitted = UnitCosts(100.0, line_through_origin(pts, bent["heads"]), line_through_origin(pts, bent["neurons"]))

    def neurons_kept(costs: UnitCosts) -> list[int]:
        masks, _ = allocate(topo, scores, costs, 1.15)
        return [int(masks.layers[b.index].neurons.sum()) for b in topo.blocks]

    piled = neurons_kept(raw)
    assert max(piled) - min(piled) > 10  # the failure the fit is for
    kept = neurons_kept(fitted)
    assert max(kept) - min(kept) <= 1 and min(kept) < 48


def test_measured_costs_come_from_compacted_copies_and_leave_the_model_as_it_was(tmp_path):
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    costs = measure_unit_costs(model, batch=2, seq_len=8, repeats=2, warmup=1, threads=1)
    assert costs.dense_ms > 0 and costs.batch == 2 and costs.seq_len == 8
    for kind, curve in (("heads", costs.heads), ("neurons", costs.neurons)):
        points = costs.measured[kind]
        assert points["removed"] == [0.0, 0.25, 0.5, 0.75] and points["saved"][0] == 0
        assert curve == line_through_origin(points["removed"], points["saved"])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    out = model(**tiny_inputs("bert")).logits
    assert out.shape == (2, 3)
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(costs.to_dict()))
    assert read_unit_costs(path) == costs
    path.write_text("{}")
    with pytest.raises(UsageError, match="not one `prunekit costs` wrote"):
        read_unit_costs(path)


def test_prunekit_costs_writes_a_file_and_never_replaces_another(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    model_dir = tmp_path / "tiny"
    tiny_model("bert").save_pretrained(model_dir)
    out = tmp_path / "costs.json"
    cmd = [sys.executable, "-m", "prunekit.cli", "costs", str(model_dir), "--batch", "2", "--seq", "8",
           "--threads", "1", "--out", str(out)]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert read_unit_costs(out).batch == 2
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    replaced = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, env=env, timeout=300)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    refused = subprocess.run([*cmd[:-1], str(mine), "--overwrite"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "not a costs file prunekit wrote" in refused.stderr
    assert mine.read_text() == '{"my": "notes"}'


def test_taylor_scores_feed_the_allocation_end_to_end():
    model = tiny_model("bert")
    batch = tiny_inputs("bert", batch=4) | {"labels": torch.tensor([0, 1, 2, 0])}
    scores = unit_scores(model, "taylor", [batch])
    masks, predicted = allocate(describe(model), scores, _costs(), 1.25)
    assert predicted <= 80.0 + 1e-9 and masks.layers
