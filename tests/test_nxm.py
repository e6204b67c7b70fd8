"""NxMTransformer (ADMM towards N:M) and the ASP baseline, compressed N:M storage, 2:4 deployment helpers.

The projection's optimality (no other N:M pattern is closer in Frobenius norm, brute force with hypothesis) and
the pad_tail refusal are tested in test_properties.py (test_nm_projection_is_optimal,
test_nm_partial_tail_is_refused_or_kept_dense); here only what is specific to the methods.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.kernels.semi_structured import NO_SPEEDUP, nm_speedup_note, semi_structured_available
from prunekit.methods.base import create_method, method_names
from prunekit.patterns import nm_mask, nm_project
from prunekit.runs.nm_storage import load_nm_compressed, pack_nm, save_nm_compressed, unpack_nm
from prunekit.topology import describe, get_module, weight_view
from tiny import tiny_inputs, tiny_model

TOTAL = 12


def _is_nm(w: torch.Tensor, n: int, m: int) -> bool:
    return bool(((w.reshape(w.shape[0], -1, m) != 0).sum(-1) <= n).all())


def _batch() -> dict:
    return {**tiny_inputs("bert"), "labels": torch.tensor([0, 2])}


def _train(model, method, opt, steps: range, total: int = TOTAL, epoch_every: int | None = None) -> list[dict]:
    """What the trainer does per optimizer step: loss + method terms, step, on_step, enforce_masks, epoch end."""
    batch, logs = _batch(), []
    for step in steps:
        out = model(**batch)
        terms = method.loss_terms(model, batch, out)
        loss = out.loss + sum(terms.values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        logged = method.on_step(step, total) | {k: float(v.detach()) for k, v in terms.items()}
        method.enforce_masks(model)
        if epoch_every and step % epoch_every == 0:
            logged |= method.on_epoch_end(step // epoch_every - 1)
        logs.append(logged)
    return logs


def _optimizer(model: nn.Module, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=weight_decay)


def _setup(config: dict, seed: int = 0, name: str = "admm"):
    model = tiny_model("bert", seed=seed)
    method = create_method(name, config)
    method.attach(model, describe(model))
    return model, method, _optimizer(model)


# ---------------------------------------------------------------- configuration


def test_registered():
    assert {"admm", "asp"} <= set(method_names())


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("admm", {"pattern": "4:2"}, "is '2:4' here"),  # the paper's reversed spelling
        ("admm", {"pattern": "4:4"}, "need 0 < N < M"),
        ("admm", {"pattern": "unstructured"}, "not N:M"),
        ("admm", {"rho": 0}, "'rho'"),
        ("admm", {"rho_growth": 0.5}, "'rho_growth'"),
        ("admm", {"admm_interval": 0}, "admm_interval"),
        ("admm", {"admm_interval": "batch"}, "admm_interval"),
        ("admm", {"end": 1.5}, "'end'"),
        ("admm", {"rhoo": 1e-3}, "unknown key 'rhoo'"),
        ("asp", {"pattern": "8:4"}, "is '4:8' here"),
        ("asp", {"pattern": "head"}, "not N:M"),
        ("asp", {"sparsity": 0.5}, "unknown key 'sparsity'"),
    ],
)
def test_bad_config(name, config, message):
    with pytest.raises(UsageError, match=message):
        create_method(name, config)


@pytest.mark.parametrize("name", ["admm", "asp"])
def test_indivisible_inputs_fail_at_attach_naming_the_module(name):
    model = tiny_model("bert")  # hidden 32, FFN 48: 5 divides neither
    with pytest.raises(UsageError, match=r"module '.*': 2:5 needs in_features divisible by 5"):
        create_method(name, {"pattern": "2:5"}).attach(model, describe(model))
    method = create_method(name, {"pattern": "2:5", "pad_tail": True})
    method.attach(model, describe(model))  # the trailing partial group stays dense


# ---------------------------------------------------------------- ADMM algebra on a toy problem


class _Toy(nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(a.shape[1], a.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(a)


def _toy_topo() -> SimpleNamespace:
    return SimpleNamespace(prunable_linears=lambda: ["lin"], blocks=[SimpleNamespace(index=0, linears=lambda: ["lin"])])


@pytest.mark.parametrize(("pattern", "rho", "growth"), [("2:4", 4.0, 1.0), ("3:8", 0.5, 1.3)])
def test_admm_on_a_quadratic_converges_to_the_projection(pattern, rho, growth):
    """min ||W - A||^2 s.t. W is N:M, W-steps by gradient descent on the method's own `admm` term: Z ends
    feasible, W meets Z (primal residual -> 0) and both land on Pi(A), the true constrained minimiser."""
    n, m = (int(x) for x in pattern.split(":"))
    torch.manual_seed(0)
    a = torch.randn(6, 4 * m)
    model = _Toy(a)
    config = {"pattern": pattern, "rho": rho, "rho_growth": growth, "rho_max": 10.0, "w_step": "loss"}  # lr*(2+rho)<2
    method = create_method("admm", config)
    method.attach(model, _toy_topo())
    w = model.lin.weight
    assert torch.equal(method.z["lin"], nm_project(a, n, m)) and not method.u["lin"].any()
    opt = torch.optim.SGD([w], lr=0.05)
    for k in range(1, 61):
        for _ in range(40):  # (nearly) exact W-step
            penalty = method.loss_terms(model, {}, None)["admm"]
            z, u = method.z["lin"], method.u["lin"]
            assert torch.allclose(penalty, 0.5 * method.rho * (w - z + u).pow(2).sum())
            loss = (w - a).pow(2).sum() + penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
        method.admm_update(k)
    history = [e["primal_residual"] for e in method.residual_history]
    target = nm_project(a, n, m)
    assert _is_nm(method.z["lin"], n, m)
    assert history[-1] < 1e-3 * history[0] or history[-1] < 1e-4, history
    assert torch.allclose(method.z["lin"], target, atol=1e-3)
    assert torch.allclose(w.detach(), target, atol=1e-2)
    if growth > 1:
        assert method.rho == 10.0  # grown to the cap


def test_proximal_w_step_on_a_quadratic_converges_to_the_projection():
    """The same problem with the penalty applied as its proximal step after each (task-only) gradient step."""
    torch.manual_seed(0)
    a = torch.randn(6, 16)
    model = _Toy(a)
    method = create_method("admm", {"rho": 1.0, "w_step": "proximal", "pull": 0.2, "admm_interval": 40})
    method.attach(model, _toy_topo())
    w = model.lin.weight
    assert method.loss_terms(model, {}, None) == {}
    opt = torch.optim.SGD([w], lr=0.05)
    for step in range(1, 2401):
        loss = (w - a).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = w.detach().clone()
        method.on_step(step, 10**6)
        if step == 1:  # one proximal move: exactly `pull` of the way to Z - U
            target = method.z["lin"] - method.u["lin"]
            assert torch.allclose(w.detach(), before - 0.2 * (before - target), atol=1e-6)
    history = [e["primal_residual"] for e in method.residual_history]
    assert history[-1] < 1e-3 * history[0], history
    assert torch.allclose(method.z["lin"], nm_project(a, 2, 4), atol=1e-3)
    assert torch.allclose(w.detach(), nm_project(a, 2, 4), atol=1e-2)


def test_first_admm_steps_pull_the_pruned_weights_to_zero_and_keep_the_pattern():
    """The penalty's gradient at W0 is rho * (W0 - Pi(W0)): nothing on kept weights, towards zero (never past it)
    on pruned ones; and a Z/U update before W has moved keeps Pi(W0)'s pattern."""
    torch.manual_seed(2)
    a = torch.randn(8, 16)
    model = _Toy(a)
    method = create_method("admm", {"rho": 0.1, "w_step": "loss"})
    method.attach(model, _toy_topo())
    w = model.lin.weight
    method.loss_terms(model, {}, None)["admm"].backward()
    keep = nm_mask(a, 2, 4)
    assert torch.allclose(w.grad, 0.1 * (a - nm_project(a, 2, 4)))
    assert not w.grad[keep].any() and bool((w.grad[~keep] * a[~keep] >= 0).all())
    method.admm_update(1)
    assert torch.equal(method.z["lin"] != 0, keep)


def test_rho_growth_rescales_the_scaled_dual():
    """U is the dual divided by rho: when rho grows, U shrinks by the same factor so rho * U is unchanged."""
    torch.manual_seed(1)
    model = _Toy(torch.randn(4, 8))
    method = create_method("admm", {"rho": 1e-2, "rho_growth": 3.0})
    method.attach(model, _toy_topo())
    w = model.lin.weight.detach()
    u_expected = method.u["lin"] + w - nm_project(w + method.u["lin"], 2, 4)
    method.admm_update(1)
    assert method.rho == pytest.approx(3e-2)
    assert torch.allclose(method.u["lin"] * 3.0, u_expected)


# ---------------------------------------------------------------- on a model, as the trainer drives it


@pytest.mark.parametrize("w_step", ["proximal", "loss"])
def test_admm_then_frozen_mask_through_adamw_with_weight_decay(w_step):
    model, method, opt = _setup({"pattern": "2:4", "rho": 1e-2, "admm_interval": 2, "end": 0.5, "w_step": w_step})
    topo = method.topo
    logs = _train(model, method, opt, range(1, 6))  # steps 1..5: ADMM only, nothing masked
    assert method.masks() is None and "admm" in logs[-1] and "primal_residual" in logs[-1]
    assert any("primal_residual/layer0" in x for x in logs)  # per-layer residuals at Z/U updates
    assert not all(_is_nm(weight_view(get_module(model, n)), 2, 4) for n in topo.prunable_linears())
    logs = _train(model, method, opt, range(6, 7))  # step 6 = end * total: hard prune
    assert logs[0]["hard_prune"] == 1.0 and method.pruned
    frozen = {k: v.clone() for k, v in method.masks().weights.items()}
    assert set(frozen) == set(topo.prunable_linears())
    before = {n: weight_view(get_module(model, n)).detach().clone() for n in frozen}
    for step in range(7, TOTAL + 1):  # AdamW's moments and decay would revive pruned weights without the mask
        logs = _train(model, method, opt, range(step, step + 1))
        assert "admm" not in logs[0]  # no penalty after the prune
        for name, mask in frozen.items():
            w = weight_view(get_module(model, name))
            assert torch.equal(method.masks().weights[name], mask), name
            assert bool((w[~mask] == 0).all()), f"{name}: a pruned weight came back"
            assert _is_nm(w, 2, 4)
    assert any(not torch.equal(before[n], weight_view(get_module(model, n))) for n in frozen)  # kept ones train
    final = method.finalize(model)
    assert final.patterns == dict.fromkeys(frozen, "2:4")
    assert all(torch.equal(final.weights[n], frozen[n]) for n in frozen)


def test_train_only_targets_freezes_everything_else():
    model, method, _ = _setup({"train_only_targets": True})
    targets = {f"{n}.{p}" for n in method.topo.prunable_linears() for p in ("weight", "bias")}
    for name, p in model.named_parameters():
        assert p.requires_grad == (name in targets), name


def test_finalize_before_end_prunes_now():
    model, method, opt = _setup({"pattern": "4:8", "end": 1.0})
    _train(model, method, opt, range(1, 4))
    masks = method.finalize(model)
    for name in method.topo.prunable_linears():
        w = weight_view(get_module(model, name))
        assert _is_nm(w, 4, 8) and torch.equal(masks.weights[name], nm_mask(w, 4, 8) | masks.weights[name])


def _checkpoint(obj) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("stop", [3, 8])  # during ADMM, and after the hard prune
def test_state_round_trip_resumes_exactly(stop):
    config = {"pattern": "2:4", "rho": 1e-2, "rho_growth": 1.5, "admm_interval": 2, "end": 0.5}
    model, method, opt = _setup(config)
    _train(model, method, opt, range(1, stop + 1), epoch_every=4)
    saved = _checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()})
    _train(model, method, opt, range(stop + 1, TOTAL + 1), epoch_every=4)

    fresh, resumed, _ = _setup(config, seed=1)
    resumed.load_state_dict(saved["method"])
    fresh.load_state_dict(saved["model"])
    opt2 = _optimizer(fresh)
    opt2.load_state_dict(saved["opt"])
    _train(fresh, resumed, opt2, range(stop + 1, TOTAL + 1), epoch_every=4)
    assert resumed.residual_history == method.residual_history and resumed.rho == method.rho
    a, b = method.finalize(model), resumed.finalize(fresh)
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_epoch_interval_updates_only_at_epoch_end():
    model, method, opt = _setup({"admm_interval": "epoch", "end": 0.9})
    _train(model, method, opt, range(1, 4), epoch_every=4)
    assert method.updates == 0
    logs = _train(model, method, opt, range(4, 5), epoch_every=4)
    assert method.updates == 1 and method.residual_history[-1]["step"] == 4 and "dual_residual" in logs[0]


def test_asp_masks_at_attach_and_keeps_the_mask():
    model = tiny_model("bert")
    dense = {n: weight_view(get_module(model, n)).detach().clone() for n in describe(model).prunable_linears()}
    method = create_method("asp", {"pattern": "2:4"})
    method.attach(model, describe(model))
    masks = method.masks()
    for name, w0 in dense.items():  # the one-shot magnitude mask of the weights it was given, applied at once
        assert torch.equal(masks.weights[name], nm_mask(w0, 2, 4))
        assert torch.equal(weight_view(get_module(model, name)), w0 * masks.weights[name])
    opt = _optimizer(model)
    _train(model, method, opt, range(1, 6))
    for name in dense:
        w = weight_view(get_module(model, name))
        assert torch.equal(method.masks().weights[name], masks.weights[name])
        assert bool((w[~masks.weights[name]] == 0).all()), name
    assert method.config.end == 0.0  # best-checkpoint selection over the whole (all masked) run


# ---------------------------------------------------------------- the real trainer on a tiny BERT


def test_trainer_runs_admm_to_an_nm_model(tmp_path):
    from prunekit.catalog import load_model
    from prunekit.tasks import get_task, load_data
    from prunekit.train.config import TrainConfig
    from prunekit.train.loop import Trainer
    from train_fixtures import sentiment_csv, tiny_bert_dir

    data, kind = load_data(
        str(sentiment_csv(tmp_path)), task="classification", columns={"text": "review", "label": "verdict"}, seed=0
    )
    task = get_task(kind)
    model, tok = load_model(str(tiny_bert_dir(tmp_path)), num_labels=2)
    method = create_method("admm", {"pattern": "2:4", "pull": 0.2, "admm_interval": 3, "end": 0.75})
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, max_length=16, log_every=1, warmup_ratio=0.0)
    trainer = Trainer(model, tok, task, data, method=method, config=cfg, work_dir=tmp_path / "w", progress=False)
    res = trainer.fit()
    for name in method.topo.prunable_linears():
        assert _is_nm(weight_view(get_module(res.model, name)), 2, 4), name
    history = [e["primal_residual"] for e in method.residual_history if not e.get("pruned")]
    assert len(history) >= 4 and history[-1] < history[0], history
    records = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert "admm" in train[0] and "primal_residual" in train[0] and "admm" not in train[-1]
    assert res.best is not None and res.best["step"] >= 0.75 * trainer.total_steps  # chosen among masked states
    assert (method.save_plots(tmp_path / "plots") or tmp_path).name == "admm_residual.png"
    assert (tmp_path / "plots" / "admm_residual.png").stat().st_size > 1000


# ---------------------------------------------------------------- compressed N:M storage


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 7)])
def test_pack_unpack_is_exact(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    w = nm_project(torch.randn(5, 6 * m, generator=g), n, m)
    w[0, :m] = 0  # groups with fewer than N non-zeros
    w[1, 1] = -0.0
    packed = pack_nm(w, n, m)
    assert packed["values"].shape == (5, 6 * n) and packed["indices"].dtype == torch.uint8
    assert int(packed["indices"].max()) < m
    assert torch.equal(unpack_nm(packed["values"], packed["indices"], n, m), w)


def test_pack_refuses_a_weight_that_is_not_nm():
    with pytest.raises(UsageError, match="not 2:4 sparse"):
        pack_nm(torch.ones(2, 8), 2, 4)


@pytest.mark.parametrize("family", ["bert", "gpt2"])  # gpt2: Conv1D (transposed storage) and tied LM head
def test_compressed_save_load_is_identical_and_smaller(family, tmp_path):
    model = tiny_model(family)
    patterns = {}
    with torch.no_grad():
        for name in describe(model).prunable_linears():
            w = weight_view(get_module(model, name))
            w.mul_(nm_mask(w, 2, 4))
            patterns[name] = "2:4"
    path = save_nm_compressed(model, tmp_path / "model.nm.safetensors", patterns)
    dense = tmp_path / "dense.safetensors"
    state = {}
    for k, v in model.state_dict().items():
        if not any(v.data_ptr() == u.data_ptr() for u in state.values()):
            state[k] = v.contiguous().clone()
    save_file(state, str(dense))
    assert path.stat().st_size < dense.stat().st_size
    fresh = load_nm_compressed(tiny_model(family, seed=1), path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(model(**tiny_inputs(family)).logits, fresh(**tiny_inputs(family)).logits)


def _nm_model(family: str, pattern: str = "2:4"):
    n, m = (int(x) for x in pattern.split(":"))
    model = tiny_model(family)
    patterns = {}
    with torch.no_grad():
        for name in describe(model).prunable_linears():
            w = weight_view(get_module(model, name))
            w.mul_(nm_mask(w, n, m))
            patterns[name] = pattern
    return model, patterns


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_run_directory_stores_nm_packed_and_loads_identically(family, tmp_path):
    import prunekit
    from prunekit.runs.io import read_manifest

    model, patterns = _nm_model(family)
    prunekit.save(model, tmp_path / "packed", patterns=patterns)
    prunekit.save(model, tmp_path / "dense", patterns=patterns, storage="dense")
    packed, dense = tmp_path / "packed", tmp_path / "dense"
    assert (packed / "model.nm.safetensors").exists() and not (packed / "model.safetensors").exists()
    assert (dense / "model.safetensors").exists() and not (dense / "model.nm.safetensors").exists()
    assert (packed / "model.nm.safetensors").stat().st_size < 0.8 * (dense / "model.safetensors").stat().st_size
    m = read_manifest(packed)
    assert m.weights_format == "nm" and not m.plain_loadable and read_manifest(dense).weights_format == "dense"
    for run in (packed, dense):
        loaded = prunekit.load(run)
        for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(a, b), (run.name, k)


def test_packed_weights_that_are_damaged_or_not_nm_any_more(tmp_path):
    import prunekit
    from prunekit.core.errors import PrunekitError

    model, patterns = _nm_model("bert")
    name = next(iter(patterns))
    with torch.no_grad():  # one module trained densely after the mask: stored as it is, values unchanged
        weight_view(get_module(model, name)).add_(0.01)
    prunekit.save(model, tmp_path / "run", patterns=patterns)
    loaded = prunekit.load(tmp_path / "run")
    assert torch.equal(weight_view(get_module(loaded, name)), weight_view(get_module(model, name)))
    path = tmp_path / "run" / "model.nm.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PrunekitError, match="corrupt or truncated"):
        prunekit.load(tmp_path / "run")


# ---------------------------------------------------------------- 2:4 deployment


def test_speedup_note_on_cpu_says_no_speedup():
    assert nm_speedup_note("cpu") == NO_SPEEDUP
    assert "no speedup on this device" in NO_SPEEDUP and not semi_structured_available("cpu")


@pytest.mark.skipif(semi_structured_available(), reason="on a 2:4-capable GPU the note does not apply")
def test_bench_and_report_say_nm_gives_no_speedup_here():
    from rich.console import Console

    from prunekit.bench import bench, format_bench
    from prunekit.report.markdown import _bench_section

    model, patterns = _nm_model("bert")
    kw = dict(grid=((1, 8),), warmup=0, repeats=1, memory=False)
    result = bench(model.eval(), tiny_model("bert").eval(), patterns=patterns, **kw)
    assert result["notes"] == [NO_SPEEDUP]
    assert bench(model, tiny_model("bert").eval(), patterns={"x": "head"}, **kw)["notes"] == []
    console = Console(width=200, record=True)
    console.print(format_bench(result))
    assert "no speedup on this device" in console.export_text()
    assert any("no speedup on this device" in line for line in _bench_section(result))


@pytest.mark.skipif(not semi_structured_available(), reason="needs a CUDA GPU with compute capability 8.0+")
def test_semi_structured_linears_match_dense():
    from prunekit.kernels.semi_structured import benchmark_semi_structured, to_semi_structured

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().half()
    with torch.no_grad():
        for lin in (model[0], model[2]):
            lin.weight.mul_(nm_mask(lin.weight, 2, 4).half())
    patterns = {"0": "2:4", "2": "2:4"}
    x = torch.randn(64, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        expected = model(x)
        assert to_semi_structured(model, patterns) == ["0", "2"]
        assert torch.allclose(model(x), expected, atol=1e-2, rtol=1e-2)
    rows = benchmark_semi_structured(model, patterns, tokens=256, repeats=3)
    assert {tuple(r["shape"]) for r in rows} == {(128, 256), (64, 128)}
