"""MLPruning: the Top-k binariser and its gradients, the adaptive regulariser's density against real compacted
models, masked == compacted, resume, a simulated training loop, and the two-step flow end to end."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.compact.remove import check_equal, compact
from prunekit.core.errors import UsageError
from prunekit.masks import block_parameter_count
from prunekit.methods.base import create_method, method_names
from prunekit.methods.mlpruning.method import TopKBinarizer, UnitScores, adaptive_penalty, kept_units
from prunekit.topology import describe, get_module, weight_view
from tiny import tiny_inputs, tiny_model

# ---------------------------------------------------------------- the binariser


def _sigmoid(t: float) -> float:
    return torch.sigmoid(torch.tensor(t, dtype=torch.float32)).item()


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), t=st.floats(-12.0, 20.0, allow_nan=False), seed=st.integers(0, 10_000))
def test_binarizer_keeps_exactly_ceil_sigmoid_t_times_n_top_scores(n, t, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g)
    mask = TopKBinarizer.apply(scores, torch.tensor(t))
    k = min(n, max(1, math.ceil(_sigmoid(t) * n)))
    assert int(mask.sum()) == k and set(mask.unique().tolist()) <= {0.0, 1.0}
    if k < n:  # the kept ones are the highest scores
        assert scores[mask.bool()].min() >= scores[~mask.bool()].max()


def test_binarizer_at_init_keeps_everything_and_ties_are_stable():
    unit = UnitScores(12)  # scores 0, threshold 10: sigmoid(10) * 12 > 11
    assert unit.kept() == 12 and bool(unit.mask().bool().all())
    assert kept_units(0.0, 5) == 1 and kept_units(1.0, 5) == 5 and kept_units(0.5, 5) == 3
    tied = torch.zeros(6)
    a = TopKBinarizer.apply(tied, torch.tensor(0.0))
    assert a.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # lowest indices win ties, every time


@pytest.mark.parametrize("t0", [-2.0, 0.3, 1.5, 10.0])
def test_binarizer_gradients_analytic(t0):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(17, generator=g, requires_grad=True)
    threshold = torch.tensor(t0, requires_grad=True)
    upstream = torch.randn(17, generator=g)
    mask = TopKBinarizer.apply(scores, threshold)
    (upstream * mask).sum().backward()
    r = _sigmoid(t0)
    torch.testing.assert_close(scores.grad, upstream)  # straight-through
    expected = float((upstream * mask.detach()).sum()) * r * (1 - r)  # chain rule through the sigmoid
    assert threshold.grad.shape == threshold.shape
    assert float(threshold.grad) == pytest.approx(expected, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("t0", [-1.0, 0.4, 2.5])
def test_binarizer_gradients_match_finite_differences_of_the_smooth_surrogate(t0):
    """The mask is piecewise constant, so its own finite differences are 0 or a jump; the backward is the exact
    derivative of the surrogate m(S, t) = m0 + (S - S0) + m0 * (sigmoid(t) - sigmoid(t0)) (straight-through
    scores, kept units' gates scaled by sigmoid(t)), checked by central differences in float64."""
    g = torch.Generator().manual_seed(2)
    s0 = torch.randn(9, generator=g, dtype=torch.float64)
    upstream = torch.randn(9, generator=g, dtype=torch.float64)
    scores = s0.clone().requires_grad_(True)
    threshold = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
    m0 = TopKBinarizer.apply(scores, threshold)
    (upstream * m0).sum().backward()
    m0 = m0.detach()

    def loss(s: torch.Tensor, t: torch.Tensor) -> float:
        surrogate = m0 + (s - s0) + m0 * (torch.sigmoid(t) - torch.sigmoid(torch.tensor(t0, dtype=torch.float64)))
        return float((upstream * surrogate).sum())

    eps = 1e-6
    t = torch.tensor(t0, dtype=torch.float64)
    fd_t = (loss(s0, t + eps) - loss(s0, t - eps)) / (2 * eps)
    assert float(threshold.grad) == pytest.approx(fd_t, rel=1e-6, abs=1e-9)
    for i in range(9):
        e = torch.zeros(9, dtype=torch.float64)
        e[i] = eps
        fd_s = (loss(s0 + e, t) - loss(s0 - e, t)) / (2 * eps)
        assert float(scores.grad[i]) == pytest.approx(fd_s, rel=1e-6, abs=1e-9)

    # torch's finite-difference checker: the binariser's backward, put behind the surrogate's forward
    class Checked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s, t):
            r = torch.sigmoid(t)
            ctx.save_for_backward(m0, r)
            return m0 + (s - s0) + m0 * r

        backward = TopKBinarizer.backward

    inputs = (s0.clone().requires_grad_(True), torch.tensor(t0, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(Checked.apply, inputs)


# ---------------------------------------------------------------- the regulariser


def test_adaptive_penalty_values():
    r, lam = adaptive_penalty(torch.tensor(0.9), 0.5)
    assert float(r) == pytest.approx(0.16) and lam == pytest.approx(2e4 * 0.16 / 0.25)
    r, lam = adaptive_penalty(torch.tensor(0.502), 0.5)  # R = 4e-6 < 3e-4
    assert lam == 10.0
    r, lam = adaptive_penalty(torch.tensor(0.53), 0.5)  # R = 9e-4: 2e4 * 9e-4 / 0.25 = 72
    assert lam == pytest.approx(72.0, rel=1e-4)
    r, lam = adaptive_penalty(torch.tensor(0.52), 0.5, lambda_final=1.0)  # R = 4e-4: the floor of 50
    assert lam == 50.0
    r, lam = adaptive_penalty(torch.tensor(0.3), 0.5)
    assert float(r) == 0.0 and lam == 10.0


def _method(config: dict | None = None):
    return create_method("mlpruning", {"block": 8, **(config or {})})


def _set_thresholds(method, seed: int, low: float = -2.0, high: float = 2.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for unit in method._units.values():
            unit.scores.copy_(torch.randn(unit.n, generator=g))
            unit.threshold.fill_(float(torch.empty(()).uniform_(low, high, generator=g)))


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2", "distilbert"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step1_density_equals_the_kept_fraction_after_compaction(family, seed):
    model = tiny_model(family)
    dense = block_parameter_count(model)[0]
    method = _method({"step": 1, "round_to_block": False})
    method.attach(model, describe(model))
    assert method._dense_step == dense  # dense counts come from the topology, biases and GQA included
    _set_thresholds(method, seed)
    kept = method.kept_params("kept")
    ratio_density = float(method.density("ratio").detach())
    kept_density = method.density("kept")
    masks = method.finalize(model)
    compact(model, masks)
    assert block_parameter_count(model)[0] == kept
    assert kept_density == pytest.approx(kept / dense)
    # the regulariser's continuous density is the ceil counts' up to less than one unit per unit type
    assert kept_density >= ratio_density - 1e-6
    if family == "llama":  # units are KV groups: K and V shrink with the kept units
        assert all(b.attention.num_kv_heads * 2 == b.attention.num_heads for b in describe(model).blocks)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_step1_alone_rounds_up_so_a_later_step2_packs_every_matrix(family):
    from prunekit.kernels.block_sparse import block_mask

    model = tiny_model(family)
    method = _method({"step": 1})  # block 8
    method.attach(model, describe(model))
    _set_thresholds(method, 3)
    plain = _method({"step": 1, "round_to_block": False})
    kept = {key: unit.kept() for key, unit in method._units.items()}
    compact(model, method.finalize(model))
    topo = describe(model)
    for b in topo.blocks:
        for name in b.linears():
            out_f, in_f = weight_view(get_module(model, name)).shape
            assert out_f % 8 == 0 and in_f % 8 == 0, name
            block_mask(get_module(model, name).weight, 8)  # what packing calls: refuses a ragged weight
    rows = {b.index: int(b.ffn.width) for b in topo.blocks}
    assert any(rows[layer] > k for (layer, kind), k in kept.items() if kind == "neurons")  # it did round up
    assert method.info["step1"]["layers"] and plain.config.round_to_block is False


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_step2_density_equals_the_kept_block_fraction(family):
    model = tiny_model(family)
    method = _method({"step": 2, "pack": "never"})
    method.attach(model, describe(model))
    names = [n for b in describe(model).blocks for n in b.linears()]
    weights = sum(weight_view(get_module(model, n)).numel() for n in names)
    assert method._dense_step == weights
    _set_thresholds(method, 3, -1.5, 1.0)
    kept, density = method.kept_params("kept"), method.density("kept")
    masks = method.finalize(model)
    assert set(masks.patterns.values()) == {"8x8"}
    nonzero = sum(int(torch.count_nonzero(weight_view(get_module(model, n)))) for n in names)
    assert nonzero == kept and density == pytest.approx(nonzero / weights)
    for n in names:  # whole 8 x 8 tiles, as the masks say
        w = weight_view(get_module(model, n))
        assert torch.equal(w != 0, masks.weights[n])


# ---------------------------------------------------------------- masked == compacted


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet", "distilbert", "llama", "gpt2"])
def test_parametrized_model_equals_its_compaction(family):
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    method = _method({"step": 1, "round_to_block": False})  # rounding up brings units back: not the masked model
    method.attach(model, describe(model))
    _set_thresholds(method, 7, -1.0, 1.0)
    with torch.no_grad():
        masked = model(**inputs).logits
    masks = method.finalize(model)
    assert not any(k.endswith(("original", "scores", "threshold")) for k in model.state_dict())
    check_equal(model, masks, inputs)
    compact(model, masks)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, masked, atol=1e-4, rtol=1e-4)


def test_unit_subset_and_masks_shapes():
    model = tiny_model("bert")
    method = _method({"step": 1, "units": ["heads", "neurons"]})
    method.attach(model, describe(model))
    _set_thresholds(method, 0)
    masks = method.masks()
    for lm in masks.layers.values():
        assert lm.heads.shape == (4,) and lm.neurons.shape == (48,)
        assert lm.attn_rows is None and lm.ffn_rows is None
    assert {k[1] for k in method._units} == {"heads", "neurons"}


# ---------------------------------------------------------------- the trainer's calls


def _optimizer(model: nn.Module, method, lr: float = 1e-3) -> torch.optim.Optimizer:
    groups = method.parameter_groups()
    own = {id(p) for g in groups for p in g["params"]}
    base = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    return torch.optim.AdamW([{"params": base}, *groups], lr=lr, weight_decay=0.01)


def _batch(family: str) -> dict:
    inputs = tiny_inputs(family)
    labels = inputs["input_ids"].clone() if family in ("llama", "gpt2") else torch.tensor([0, 2])
    return {**inputs, "labels": labels}


def _train(model, method, opt, family: str, steps: range, total: int) -> list[dict]:
    batch, logs = _batch(family), []
    for step in steps:
        out = model(**batch)
        terms = method.loss_terms(model, batch, out)
        loss = out.loss + sum(terms.values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        logs.append(method.on_step(step, total) | {k: float(v.detach()) for k, v in terms.items()})
        method.enforce_masks(model)
    return logs


FAST = {"threshold_init": 3.0, "threshold_lr": 0.2}  # thresholds start near the action, so 60 steps suffice


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_simulated_training_drives_density_to_the_target(family):
    model = tiny_model(family)
    method = _method({"step": 1, "target": 0.5, "threshold_init": 3.0})
    method.attach(model, describe(model))
    method.planned_steps = 60  # as the trainer sets it: the auto threshold lr covers the distance in 18 steps
    opt = _optimizer(model, method)
    assert method.parameter_groups()[1]["lr"] == pytest.approx(3.0 / 18)
    logs = _train(model, method, opt, family, range(1, 61), 60)
    assert {"density", "kept_density", "R", "lambda", "mlpruning_reg", "overall_density"} <= set(logs[0])
    assert logs[0]["density"] > 0.9 and logs[0]["lambda"] > 1000
    densities = [x["density"] for x in logs]
    # the adaptive lambda weakens near the target: the density approaches it from above and does not pass it
    assert densities[-1] <= 0.5 + 0.04 and logs[-1]["lambda"] < 100 and min(densities) > 0.5 - 0.04
    assert logs[-1]["kept_density"] < 0.7  # ceil counts of tiny layers (4 heads) sit above the continuous value
    assert densities[30] < densities[0]


def test_threshold_lr_auto_covers_the_distance_in_reach_of_the_stage():
    model = tiny_model("bert")
    method = _method({"step": 1, "target": 0.5, "threshold_init": 10.0, "reach": 0.25})
    method.attach(model, describe(model))
    assert method.threshold_lr() == method.config.score_lr  # stage length unknown (a hand-built optimizer)
    method.planned_steps = 200
    assert method.threshold_lr() == pytest.approx((10.0 - 0.0) / (0.25 * 200))
    scores, thresholds = method.parameter_groups()
    units = list(method._units.values())
    assert [id(p) for p in scores["params"]] == [id(u.scores) for u in units] and scores["lr"] == 0.01
    assert [id(p) for p in thresholds["params"]] == [id(u.threshold) for u in units]
    assert thresholds["betas"] == (0.0, 0.9) and thresholds["weight_decay"] == 0.0
    assert method.info["threshold_lr"] == {"1": thresholds["lr"]}
    method = _method({"step": 2, "block_target": 0.3, "threshold_init": 10.0})
    method.attach(tiny_model("bert"), describe(tiny_model("bert")))
    method.planned_steps = 100
    assert method.threshold_lr() == pytest.approx((10.0 - math.log(0.3 / 0.7)) / (0.3 * 100))
    assert _method({"step": 1, "threshold_lr": 0.05}).threshold_lr() == 0.05
    for bad in ({"threshold_lr": 0}, {"threshold_lr": "fast"}, {"threshold_betas": [0.0, 1.0]}):
        with pytest.raises(UsageError):
            _method({"step": 1, **bad})


def _min_density(betas: tuple[float, float]) -> float:
    model = tiny_model("bert")
    method = _method({"step": 1, "target": 0.5, "threshold_init": 3.0, "threshold_lr": 0.3, "threshold_betas": betas})
    method.attach(model, describe(model))
    logs = _train(model, method, _optimizer(model, method), "bert", range(1, 41), 40)
    return min(x["density"] for x in logs)


def test_momentum_free_thresholds_stop_at_the_target():
    """The regulariser's gradient vanishes at the target; momentum would carry a fast threshold past it."""
    assert _min_density((0.0, 0.9)) > 0.5 - 0.04
    assert _min_density((0.9, 0.999)) < 0.5 - 0.08


def test_state_round_trip_resumes_exactly():
    family = "llama"
    config = {"step": 1, **FAST}
    model = tiny_model(family)
    method = _method(config)
    method.attach(model, describe(model))
    opt = _optimizer(model, method)
    _train(model, method, opt, family, range(1, 9), 20)
    model_state = copy.deepcopy(model.state_dict())
    assert any(k.endswith("mlpruning.heads.threshold") for k in model_state)  # scores live in the model
    state, opt_state = copy.deepcopy(method.state_dict()), copy.deepcopy(opt.state_dict())
    torch.save(state, "/dev/null")  # checkpointable
    logs_a = _train(model, method, opt, family, range(9, 21), 20)

    fresh = tiny_model(family, seed=5)
    resumed = _method(config)
    resumed.attach(fresh, describe(fresh))  # attach first: it creates the parametrization keys
    fresh.load_state_dict(model_state)
    resumed.load_state_dict(state)
    opt2 = _optimizer(fresh, resumed)
    opt2.load_state_dict(opt_state)
    logs_b = _train(fresh, resumed, opt2, family, range(9, 21), 20)
    assert logs_a == logs_b
    a, b = method.finalize(model), resumed.finalize(fresh)
    for i, lm in a.layers.items():
        assert torch.equal(lm.heads, b.layers[i].heads) and torch.equal(lm.ffn_rows, b.layers[i].ffn_rows)
    with torch.no_grad():
        assert torch.equal(model(**tiny_inputs(family)).logits, fresh(**tiny_inputs(family)).logits)
    wrong = _method({**config, "step": 2})
    with pytest.raises(RuntimeError, match="step"):
        wrong.load_state_dict(state)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_two_steps_in_process(family):
    """step: both without the pipeline: step 1, next_stage (round up + compact), step 2 from the compacted model."""
    model = tiny_model(family)
    method = _method({"step": "both", "pack": "always", **FAST})
    method.attach(model, describe(model))
    opt = _optimizer(model, method)
    _train(model, method, opt, family, range(1, 31), 30)
    assert method.masks().weights == {}
    step1 = method.masks()
    nxt = method.next_stage(model)
    assert nxt is not None and nxt.stage == "prune-blocks" and method.step == 2
    topo = describe(model)
    for b in topo.blocks:  # kept units rounded up to the block size (8): every matrix splits into 8 x 8 tiles
        for name in b.linears():
            out_f, in_f = weight_view(get_module(model, name)).shape
            assert out_f % 8 == 0 and in_f % 8 == 0, (name, out_f, in_f)
        kept = int(step1.layers[b.index].heads.sum())
        assert b.attention.num_heads >= kept
    inputs = tiny_inputs(family)
    with torch.no_grad():
        torch.testing.assert_close(nxt.teacher(**inputs).logits, model(**inputs).logits)
    method.attach(model, topo)  # what the trainer does for the next stage
    opt = _optimizer(model, method)
    logs = _train(model, method, opt, family, range(1, 31), 30)
    assert logs[-1]["mlpruning_step"] == 2.0 and logs[-1]["density"] < logs[0]["density"]
    assert logs[-1]["overall_density"] < logs[0]["overall_density"] < 1.0
    assert method.next_stage(model) is None
    with torch.no_grad():
        masked = model(**inputs).logits
    masks = method.finalize(model)
    assert masks.weights and all(p == "8x8" for p in masks.patterns.values())
    packed = [m for m in model.modules() if type(m).__name__ == "BlockSparseLinear"]
    if family != "gpt2":  # Conv1D stays dense
        assert packed and method.pack_report["packed"] == len(packed)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, masked, atol=1e-4, rtol=1e-4)
    assert method.state_dict()["info"]["step1"]["layers"]


def test_finalize_in_step_one_of_both_warns():
    model = tiny_model("bert")
    method = _method()
    method.attach(model, describe(model))
    with pytest.warns(UserWarning, match="step 2"):
        method.finalize(model)


def test_registered_and_config_errors():
    assert "mlpruning" in method_names()
    for bad, message in (
        ({"units": []}, "unit type"),
        ({"units": ["heads", "heads"]}, "twice"),
        ({"units": ["layers"]}, "units"),
        ({"target": 0}, "target"),
        ({"step": 3}, "step"),
        ({"block": 0}, "block"),
        ({"nonsense": 1}, "unknown key"),
    ):
        with pytest.raises(UsageError, match=message):
            create_method("mlpruning", bad)


# ---------------------------------------------------------------- the two-step recipe end to end


@pytest.mark.slow
def test_two_step_recipe_end_to_end(tmp_path):
    from prunekit.pipelines.prune import run_recipe
    from prunekit.recipe import load_recipe
    from prunekit.runs.io import load, read_manifest
    from train_fixtures import sentiment_csv, tiny_bert_dir

    model_dir, csv_path = tiny_bert_dir(tmp_path), sentiment_csv(tmp_path)
    path = tmp_path / "mlpruning.yaml"
    path.write_text(
        f"model: {model_dir}\n"
        f"data: {{dataset: {csv_path}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "finetune: {epochs: 3, batch_size: 16, lr: 1.0e-2, max_length: 16}\n"
        "train: {epochs: 2, batch_size: 16, lr: 3.0e-3, max_length: 16}\n"
        "method: {name: mlpruning, step: both, target: 0.5, block_target: 0.5, block: 8, threshold_init: 0.5,"
        " score_lr: 0.2, pack: always}\n"
        "distill: {teacher: dense, alpha: 0.9, temperature: 2.0, hidden_weight: 1.0, attention_weight: 1.0}\n"
        "bench: {batch: [2], seq: 16, repeats: 2, warmup: 1}\n"
    )
    out = tmp_path / "run"
    summary = run_recipe(load_recipe(path), out, progress=False, log=lambda *a: None)
    manifest = read_manifest(out)
    assert manifest.method == "mlpruning" and set(manifest.patterns.values()) == {"8x8"}
    structure = manifest.structure  # step 1 pruned heads / rows / neurons, rounded up to multiples of the block
    assert sum(e.heads for e in structure) < 8 or any(e.attn_rows or e.ffn_rows for e in structure)
    assert all(e.ffn_width % 8 == 0 and (e.attn_rows or 0) % 8 == 0 and (e.ffn_rows or 0) % 8 == 0 for e in structure)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"finetune", "prune", "prune-blocks"}
    train_logs = [r for r in records if r["stage"] == "prune-blocks" and r["type"] == "train"]
    assert train_logs and {"density", "R", "lambda", "kd_attention", "kd_hidden"} <= set(train_logs[-1])
    assert train_logs[-1]["overall_density"] < 0.6
    assert summary["metrics"]["test"]["accuracy"] >= 0.6
    loaded = load(out)  # saved as standard weights: plain modules, same metric
    from prunekit.api import evaluate_run

    assert not any(type(m).__name__ == "BlockSparseLinear" for m in loaded.modules())
    assert evaluate_run(str(out))["accuracy"] == pytest.approx(manifest.metrics["test"]["accuracy"])
