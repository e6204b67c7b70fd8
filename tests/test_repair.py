"""Least-squares repair after removal (compact/repair.py): each fit is the optimum of its objective, never worse
than the weights it replaces, and the repaired model is closer to the dense one than the merely compacted one."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.compact import compact
from prunekit.compact.repair import _output_projections, _stacked, normal_equations, refit_outputs
from prunekit.importance import unit_masks, unit_scores
from prunekit.topology import describe, get_module, weight_view
from tiny import tiny_inputs, tiny_model


def _batches(family: str, n: int = 6) -> list[dict]:
    return [tiny_inputs(family, batch=4, seq=9, seed=seed) for seed in range(n)]


def _pruned(family: str):
    dense = tiny_model(family).eval()
    model = copy.deepcopy(dense)
    masks = unit_masks(describe(model), unit_scores(model, "magnitude"), heads=0.5, neurons=0.5)
    compact(model, masks)
    return dense, model


def _logits_gap(model, dense, batches) -> float:
    with torch.no_grad():
        return sum(float((model(**b).logits - dense(**b).logits).pow(2).mean()) for b in batches)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_repair_brings_the_pruned_model_closer_to_the_dense_one(family):
    dense, model = _pruned(family)
    batches = _batches(family)
    gap_before = _logits_gap(model, dense, batches)
    report = refit_outputs(model, dense, lambda: iter(batches))
    assert set(report) == set(_output_projections(describe(model)))
    assert all(r["mse_after"] <= r["mse_before"] for r in report.values())
    assert sum(r["mse_after"] for r in report.values()) < sum(r["mse_before"] for r in report.values())
    assert _logits_gap(model, dense, batches) < gap_before


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_each_fit_is_the_least_squares_optimum(family):
    """After the repair, the last projection's weights solve its (ridge-regularised) normal equations, and any
    perturbation of them raises the objective: the fit is optimal, not merely better."""
    dense, model = _pruned(family)
    batches = _batches(family)
    ridge = 1e-4
    refit_outputs(model, dense, lambda: iter(batches), ridge=ridge)
    name = _output_projections(describe(model))[-1]  # later fits do not change its inputs: none follows it
    module = get_module(model, name)
    eq = normal_equations(model, dense, name, iter(batches), bias=module.bias is not None)
    w = _stacked(module)
    solved = eq.solve(ridge)
    torch.testing.assert_close(w, solved, rtol=1e-4, atol=1e-5)  # stored in float32: equal to rounding
    best = eq.objective(w)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert eq.objective(w + 1e-2 * torch.randn(w.shape, generator=g, dtype=w.dtype)) > best


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_block_by_block_repair_equals_the_whole_model_definition(family):
    """Every projection gets the fit its definition gives: its inputs from whole-model forwards of the pruned
    model (the projections before it already re-fit), its targets from whole-model forwards of the dense one."""
    dense, model = _pruned(family)
    reference = copy.deepcopy(model)
    batches = _batches(family)
    refit_outputs(model, dense, lambda: iter(batches))
    with torch.no_grad():
        for name in _output_projections(describe(reference)):
            module = get_module(reference, name)
            bias = module.bias is not None
            eq = normal_equations(reference, dense, name, iter(batches), bias=bias)
            new = eq.solve(1e-4)
            if eq.objective(new) < eq.objective(_stacked(module)):
                weight_view(module).copy_(new[: weight_view(module).shape[1]].T.float())
                if bias:
                    module.bias.copy_(new[-1].float())
    for name in _output_projections(describe(model)):
        torch.testing.assert_close(_stacked(get_module(model, name)), _stacked(get_module(reference, name)),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_repair_needs_batches():
    dense, model = _pruned("bert")
    with pytest.raises(ValueError, match="calibration batches"):
        refit_outputs(model, dense, lambda: iter([]))


def test_structured_method_repairs_after_compaction_when_asked():
    """The `structured` method with `repair: true` keeps the dense model through calibration, re-fits the
    compacted model's projections in `after_compact` (the pipeline's call) and reports the fit; without it, the
    compacted model is left as it is."""
    from prunekit.methods.base import create_method

    batches = [dict(b, labels=torch.tensor([0, 2, 1, 0])) for b in _batches("bert")]
    results = {}
    for repair in (False, True):
        dense = tiny_model("bert").eval()
        model = copy.deepcopy(dense)
        method = create_method("structured", {"criterion": "taylor", "heads": 0.5, "neurons": 0.5, "repair": repair})
        method.attach(model, describe(model))
        method.calibrate(model, iter(batches))
        compact(model, method.prune_before_training())
        method.after_compact(model, lambda: iter(batches))
        results[repair] = (_logits_gap(model, dense, batches), method.report())
    assert "repair" not in results[False][1]
    fit = results[True][1]["repair"]
    assert fit["mse_after"] < fit["mse_before"]
    assert results[True][0] < results[False][0]
