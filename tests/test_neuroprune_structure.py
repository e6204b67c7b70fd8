"""NeuroPrune's structure mode (methods/neuroprune/groups.py): the proximal group step is group lasso's proximal
map, the empty fraction follows the schedule, the end is exact, and what it empties compacts away exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.compact.remove import check_equal, compact
from prunekit.core.errors import UsageError
from prunekit.methods.base import create_method
from prunekit.methods.neuroprune.groups import GroupShrink, Unit, units, weighted_quantile
from prunekit.topology import describe, get_module, weight_view
from test_neuroprune import _steps, resumed_twin
from tiny import tiny_inputs, tiny_model


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_one_pull_is_the_group_lasso_proximal_map():
    """Below the cap, g <- argmin_x 0.5 ||x - g||^2 + tau ||x||_2 with tau = lam sqrt(|g|) m (checked against
    random perturbations); above the cap the group is untouched."""
    torch.manual_seed(0)
    w_in, w_out = torch.randn(6, 5), torch.randn(5, 6)
    w_in[0] *= 0.05  # a weak neuron
    w_out[:, 0] *= 0.05
    w_in[1] *= 0.3
    w_out[:, 1] *= 0.3
    unit = Unit("ffn.0", [w_in], [w_out])
    shrink = GroupShrink(fraction=0.2, start=0.0, end=1.0, rate=0.02)
    shrink.mean_abs, shrink.total, shrink.scale = {"ffn.0": 1.0}, 60, 0.0
    before = [g.clone() for g in (w_in, w_out)]
    norms = unit.squares().sqrt()
    scores = norms / unit.size**0.5
    lam = float(scores[1]) * 0.5  # empties neuron 0, shrinks neuron 1
    shrink.scale = lam * 10  # lam = scale / total_steps
    cap = weighted_quantile(scores, torch.full_like(scores, 10.0), 0.2 * 60)
    assert float(scores[1]) <= cap < float(scores[2:].min())  # the cap admits exactly the two weak neurons
    assert shrink.step([unit], total_steps=10, mode="pull") == pytest.approx(lam)

    def group(j, mats):
        return torch.cat([mats[0][j], mats[1][:, j]])

    tau = lam * unit.size**0.5
    for j in range(6):
        g, x = group(j, before), group(j, (w_in, w_out))
        if j >= 2:
            assert torch.equal(x, g)
            continue

        def obj(v, g=g):
            return 0.5 * float((v - g).square().sum()) + tau * float(v.norm())

        for _ in range(200):
            assert obj(x) <= obj(x + 1e-3 * torch.randn_like(x)) + 1e-9
    assert not bool(group(0, (w_in, w_out)).any()) and bool(group(1, (w_in, w_out)).all())


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_structure_mode_follows_the_schedule_and_compacts_exactly(family):
    model = tiny_model(family)
    topo = describe(model)
    method = create_method("neuroprune", {"target_sparsity": 0.6, "structure": 0.3, "theta": 0.0})
    method.attach(model, topo)
    largest = max(u.size for u in units(model, topo)) / method.groups.total
    logs = _steps(model, method, family, range(1, 21), total=20, lr=1e-3)
    # the empty fraction tracks the schedule from below (a step's pull stops at the goal's quantile); dying
    # neurons' other weights are zeroed, which can add at most a group's worth
    assert all(r["structure_empty"] <= r["structure_goal"] + largest for r in logs)
    assert logs[-1]["structure_empty"] >= 0.3 - largest  # reached by `end` (0.7) and held
    masks = method.finalize(model)
    report = method.final_report
    assert 0.3 <= report["structure_removed"] < 0.3 + largest
    assert report["sparsity"] == pytest.approx(0.6, abs=0.005)
    hidden = topo.hidden_size * topo.num_layers
    removed = (hidden - report["attn_read_dims_kept"]) + (
        report["neurons_kept"] < sum(b.ffn.width for b in topo.blocks)
    )
    assert removed > 0  # something whole went: read dimensions or neurons
    inputs = tiny_inputs(family)
    check_equal(model, masks, inputs)  # the compacted model computes what the masked one does
    before = _params(model)
    compact(model, masks)
    assert _params(model) < before
    gathered = sum(getattr(m, "in_index", None) is not None for m in model.modules())
    assert (gathered > 0) == (report["attn_read_dims_kept"] < hidden or report["ffn_read_dims_kept"] < hidden)


def test_the_end_cut_empties_the_weakest_groups_to_the_fraction():
    model = tiny_model("bert")
    topo = describe(model)
    method = create_method("neuroprune", {"target_sparsity": 0.5, "structure": 0.25})
    method.attach(model, topo)
    shrink = method.groups
    scores, sizes = shrink._scores(units(model, topo))
    reached = shrink.cut(units(model, topo))
    after, _ = shrink._scores(units(model, topo))
    emptied = after == 0
    assert 0.25 <= reached == float(sizes[emptied].sum()) / shrink.total
    assert float(scores[emptied].max()) <= float(scores[~emptied].min())  # the weakest went, nothing else changed
    assert torch.allclose(after[~emptied], scores[~emptied])


def test_state_round_trip_and_identical_continuation():
    model = tiny_model("llama")
    method = create_method("neuroprune", {"target_sparsity": 0.5, "structure": 0.3, "theta": 1e6})
    method.attach(model, describe(model))
    _steps(model, method, "llama", range(1, 9))
    twin_model, twin = resumed_twin(model, method)
    assert twin.groups.scale == method.groups.scale and twin.groups.zeros.keys() == method.groups.zeros.keys()
    _steps(model, method, "llama", range(9, 13))
    _steps(twin_model, twin, "llama", range(9, 13))
    for (k, v), (_, v2) in zip(model.state_dict().items(), twin_model.state_dict().items(), strict=True):
        assert torch.equal(v, v2), k


@pytest.mark.parametrize(
    "config,message",
    [
        ({"structure": 0.3}, "target_sparsity"),
        ({"structure": 0.6, "target_sparsity": 0.5}, "target_sparsity"),
        ({"structure": 0.3, "target_sparsity": 0.5, "penalty": "loss"}, "proximal"),
        ({"structure": 0.0, "target_sparsity": 0.5}, "structure"),
    ],
)
def test_bad_structure_config(config, message):
    with pytest.raises(UsageError, match=message):
        create_method("neuroprune", config)


def test_groups_are_views_on_the_weights():
    model = tiny_model("bert")
    topo = describe(model)
    (ffn, attn, *_) = units(model, topo)
    att = topo.blocks[0].attention
    assert attn.count == topo.hidden_size and attn.size == 3 * weight_view(get_module(model, att.q)).shape[0]
    factor = torch.ones(attn.count)
    factor[3] = 0.0
    attn.scale_(factor)
    for name in (att.q, att.k, att.v):
        assert not bool(weight_view(get_module(model, name))[:, 3].any())
    assert ffn.count == topo.blocks[0].ffn.width


def test_a_structure_run_through_the_cli_is_smaller_and_reloads(tmp_path):
    """The pipeline compacts what the structure mode empties (fewer parameters, the read dimensions in the
    manifest) and the saved run evaluates to its recorded accuracy."""
    import json

    from prunekit.runs.io import read_manifest
    from test_pipeline import _cli, _recipe

    recipe = _recipe(tmp_path, "neuroprune, target_sparsity: 0.6, structure: 0.4")
    out = tmp_path / "run"
    _cli("prune", recipe, "--out", str(out), "--no-progress", "--json")
    manifest = read_manifest(out)
    report = manifest.method_report["final_report"]
    # at this tiny model's learning rate (lr / mean |w| ~ 0.1) a group the step emptied can regrow past the pull
    # and the end cut empties it again, over the element target by a few groups (at MiniLM's, lr / m ~ 1e-3)
    assert report["structure_removed"] >= 0.4 and 0.599 <= report["sparsity"] <= 0.65
    read = sum(e.attn_cols if e.attn_cols is not None else 32 for e in manifest.structure)
    assert read == report["attn_read_dims_kept"]
    widths = sum(e.ffn_width for e in manifest.structure)
    assert widths == report["neurons_kept"]
    assert read < 64 or widths < 128  # something whole was removed
    evaluated = json.loads(_cli("evaluate", str(out), "--json").stdout)[0]
    assert evaluated["accuracy"] == pytest.approx(manifest.metrics["test"]["accuracy"])
    text = (out / "report.md").read_text()  # the report says what was removed
    for line in (f"- attn read dims kept: {read}", f"- neurons kept: {widths}", "- structure removed: 0.4"):
        assert line in text, line


def test_activation_scores_empty_what_the_data_does_not_use_first():
    """A neuron with the largest weights but (almost) no activation goes before small neurons the data drives;
    by weight norm alone it would stay."""
    model = tiny_model("bert")
    topo = describe(model)
    ffn = topo.blocks[0].ffn
    with torch.no_grad():
        for name in ffn.inputs:
            weight_view(get_module(model, name))[5] *= 10.0
        weight_view(get_module(model, ffn.output))[:, 5] *= 10.0
    for score, gone in (("magnitude", False), ("activation", True)):
        twin = copy.deepcopy(model)
        method = create_method("neuroprune", {"target_sparsity": 0.3, "structure": 0.05, "structure_score": score})
        method.attach(twin, topo)
        if method.groups.activations is not None:
            sq = torch.ones(ffn.width)
            sq[5] = 1e-8  # the data never drives neuron 5
            method.groups.activations.sq["ffn.0"] = sq
        method.groups.cut(units(twin, topo))
        emptied = not bool(weight_view(get_module(twin, ffn.output))[:, 5].any())
        assert emptied == gone, score


def test_activation_norms_come_from_training_batches_and_leave_with_finalize():
    model = tiny_model("llama")
    topo = describe(model)
    method = create_method("neuroprune", {"target_sparsity": 0.5, "structure": 0.2, "theta": 1e6})
    method.attach(model, topo)
    acts = method.groups.activations
    model.eval()
    model(**tiny_inputs("llama"))
    assert acts.sq == {}  # evaluation passes do not count
    _steps(model, method, "llama", range(1, 3))
    for b in topo.blocks:  # one RMS per read dimension and per neuron
        assert acts.sq[f"attn.{b.index}"].shape == (topo.hidden_size,)
        assert acts.sq[f"ffn.{b.index}"].shape == (b.ffn.width,)
    method.finalize(model)
    assert not any(m._forward_pre_hooks for m in model.modules())
