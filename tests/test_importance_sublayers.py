"""Scores of whole sublayers and of their output rows: each criterion measures what it claims, the selection drops
and keeps what it should, and the masks it makes compact exactly."""

from __future__ import annotations

import pytest
import torch

from prunekit.compact.remove import check_equal
from prunekit.core.errors import UsageError
from prunekit.importance import (
    SublayerScores,
    sublayer_masks,
    sublayer_scores,
    unit_masks,
    unit_scores,
)
from prunekit.masks import MaskSet
from prunekit.topology import describe, get_module, weight_view
from prunekit.topology.base import is_conv1d
from test_importance import _batches
from tiny import FAMILIES, tiny_inputs, tiny_model


def _loss_scaled(model, module_name: str, scale: torch.Tensor, batches) -> float:
    """The summed loss with the output of `module_name` multiplied by `scale` (per hidden dimension)."""
    handle = get_module(model, module_name).register_forward_hook(lambda m, a, out: out * scale.to(out.dtype))
    try:
        with torch.no_grad():
            return sum(float(model(**b).loss) for b in batches)
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_taylor_of_a_sublayer_and_of_a_row_is_the_first_order_loss_change_of_zeroing_it(family):
    """|d loss / d gate| of a gate on the sublayer's whole output, and on one row of it, by central differences."""
    model = tiny_model(family).double()
    model.eval()
    topo = describe(model)
    batches = _batches(family)
    scores = sublayer_scores(model, "taylor", batches)
    assert scores.batches == 2
    b = topo.blocks[1]
    eps = 1e-2
    for kind, name in (("attention", b.attention.o), ("ffn", b.ffn.output)):
        width = weight_view(get_module(model, name)).shape[0]
        plus = _loss_scaled(model, name, torch.full((width,), 1 + eps, dtype=torch.float64), batches)
        minus = _loss_scaled(model, name, torch.full((width,), 1 - eps, dtype=torch.float64), batches)
        assert scores.sublayers[(b.index, kind)] == pytest.approx(abs(plus - minus) / (2 * eps), rel=3e-3, abs=1e-6)
        rows = scores.rows[(b.index, kind)]
        for r in (0, width - 1):
            up, down = torch.ones(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)
            up[r], down[r] = 1 + eps, 1 - eps
            diff = abs(_loss_scaled(model, name, up, batches) - _loss_scaled(model, name, down, batches)) / (2 * eps)
            assert float(rows[r]) == pytest.approx(diff, rel=3e-3, abs=2e-3 * float(rows.max())), (kind, r)


def test_fisher_and_sensitivity_of_a_sublayer_use_its_per_batch_gradient():
    model = tiny_model("bert").double()
    batches = _batches("bert", 3)
    per_batch = [sublayer_scores(model, "taylor", [b]) for b in batches]  # |g_b| of each batch alone
    fisher = sublayer_scores(model, "fisher", batches)
    sensitivity = sublayer_scores(model, "sensitivity", batches)
    taylor = sublayer_scores(model, "taylor", batches)
    for key in fisher.sublayers:
        assert fisher.sublayers[key] == pytest.approx(sum(s.sublayers[key] ** 2 for s in per_batch), rel=1e-6)
        assert sensitivity.sublayers[key] == pytest.approx(sum(s.sublayers[key] for s in per_batch), rel=1e-6)
        assert sensitivity.sublayers[key] >= taylor.sublayers[key] * (1 - 1e-9)
        expected_rows = sum(s.rows[key].double() ** 2 for s in per_batch)
        assert torch.allclose(fisher.rows[key].double(), expected_rows, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_activation_ranks_a_silenced_sublayer_and_row_last(family):
    """An attention whose output projection is zero writes nothing, and a zero row of W2 writes nothing to its
    hidden dimension: both must score zero, the lowest."""
    model = tiny_model(family)
    topo = describe(model)
    b0, b1 = topo.blocks[0], topo.blocks[1]
    with torch.no_grad():
        o = get_module(model, b1.attention.o)
        weight_view(o).zero_()
        if getattr(o, "bias", None) is not None:
            o.bias.zero_()
        w2 = get_module(model, b0.ffn.output)
        weight_view(w2)[3].zero_()
        if getattr(w2, "bias", None) is not None:
            w2.bias[3] = 0
    scores = sublayer_scores(model, "activation", _batches(family))
    attention = {k: v for k, v in scores.sublayers.items() if k[1] == "attention"}
    assert min(attention, key=attention.get) == (b1.index, "attention") and attention[(b1.index, "attention")] == 0
    assert max(attention.values()) > 0
    rows = scores.rows[(b0.index, "ffn")]
    assert int(rows.argmin()) == 3 and float(rows[3]) == 0 < float(rows.max())


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_elementwise_and_magnitude_sum_the_groups_own_weights(family):
    model = tiny_model(family).double()
    topo = describe(model)
    batches = _batches(family)
    model.zero_grad()
    model.eval()
    for batch in batches:
        model(**batch).loss.backward()
    b = topo.blocks[0]

    def oriented(name: str, value: torch.Tensor) -> torch.Tensor:
        return value.T if is_conv1d(get_module(model, name)) else value

    def terms(name: str, elem) -> tuple[torch.Tensor, torch.Tensor]:
        m = get_module(model, name)
        w = oriented(name, elem(m.weight))
        return w, elem(m.bias) if m.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)

    ew = sublayer_scores(model, "taylor-elementwise", batches)
    mag = sublayer_scores(model, "magnitude")
    for kind, spec in (("attention", b.attention), ("ffn", b.ffn)):
        out = spec.o if kind == "attention" else spec.output
        taylor = lambda p: (p.detach() * p.grad).abs()  # noqa: E731
        w, bias = terms(out, taylor)
        assert torch.allclose(ew.rows[(b.index, kind)].double(), w.sum(1) + bias, rtol=1e-4)
        total = sum(float(w.sum() + bias.sum()) for w, bias in (terms(n, taylor) for n in spec.linears()))
        assert ew.sublayers[(b.index, kind)] == pytest.approx(total, rel=1e-6)
        square = lambda p: p.detach().pow(2)  # noqa: E731
        w, bias = terms(out, square)
        assert torch.allclose(mag.rows[(b.index, kind)].double(), (w.sum(1) + bias).sqrt(), rtol=1e-4)
        total = sum(float(w.sum() + bias.sum()) for w, bias in (terms(n, square) for n in spec.linears()))
        assert mag.sublayers[(b.index, kind)] == pytest.approx(total**0.5, rel=1e-6)


def test_sublayer_masks_drop_the_lowest_and_keep_one_of_each_kind():
    scores = SublayerScores(
        sublayers={
            (0, "attention"): 5.0,
            (0, "ffn"): 1.0,
            (1, "attention"): 0.5,
            (1, "ffn"): 0.1,
            (2, "attention"): 0.2,
            (2, "ffn"): 9.0,
        },  # fmt: skip
        rows={
            k: torch.tensor([3.0, 1.0, 2.0, 4.0])
            for k in [(0, "attention"), (0, "ffn"), (1, "attention"), (1, "ffn"), (2, "attention"), (2, "ffn")]
        },  # fmt: skip
    )
    masks = MaskSet()
    masks.layer(1).heads = torch.tensor([True, False])
    sublayer_masks(masks, scores, sublayers=0.5, rows=0.5)  # 3 of 6: 1.ffn, 2.attention, 1.attention
    dropped = {(i, k) for i, lm in masks.layers.items() for k in ("attention", "ffn") if getattr(lm, f"drop_{k}")}
    assert dropped == {(1, "ffn"), (2, "attention"), (1, "attention")}
    assert masks.layer(1).heads is None  # nothing left of a dropped attention to mask
    assert masks.layer(0).attn_rows.tolist() == [True, False, False, True] and masks.layer(1).ffn_rows is None
    # asked for 5 of 6: one attention (the best, 0) and one FFN (the best, 2) stay
    masks = sublayer_masks(MaskSet(), scores, sublayers=0.84)
    kept = {(i, k) for i in range(3) for k in ("attention", "ffn") if not getattr(masks.layer(i), f"drop_{k}")}
    assert kept == {(0, "attention"), (2, "ffn")}


@pytest.mark.parametrize("family", FAMILIES)
def test_sublayer_and_row_masks_compact_exactly(family):
    model = tiny_model(family)
    batches = _batches(family)
    topo = describe(model)
    masks = unit_masks(topo, unit_scores(model, "taylor", batches), heads=0.5, neurons=0.5)
    sublayer_masks(masks, sublayer_scores(model, "taylor", batches), sublayers=0.25, rows=0.25)
    assert any(lm.drop_attention or lm.drop_ffn for lm in masks.layers.values())
    check_equal(model, masks, tiny_inputs(family))  # the masked model equals the compacted one


def test_errors():
    model = tiny_model("bert")
    with pytest.raises(UsageError, match="not one of"):
        sublayer_scores(model, "random")
    with pytest.raises(UsageError, match="calibration batches"):
        sublayer_scores(model, "taylor")
    with pytest.raises(UsageError, match="no calibration"):
        sublayer_scores(model, "fisher", [])
