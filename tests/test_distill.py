"""Distillation terms: values against hand computations, masking, layer maps, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from prunekit.compact.remove import compact
from prunekit.core.errors import UsageError
from prunekit.masks import MaskSet
from prunekit.topology import describe
from prunekit.train.distill import (
    DistillConfig,
    default_layer_map,
    distill_terms,
    kd_token_mask,
    needs_attentions,
    needs_hidden,
    teacher_outputs,
)
from tiny import tiny_inputs, tiny_model


def _softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [x / sum(e) for x in e]


def _hand_kl(s: list[float], t: list[float], temp: float) -> float:
    ps, pt = _softmax([x / temp for x in s]), _softmax([x / temp for x in t])
    return sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))


def test_kl_term_equals_hand_computation():
    s, t = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], [[3.0, 2.0, 1.0], [0.0, 0.0, 1.0]]
    cfg = DistillConfig(alpha=0.3, temperature=2.0)
    terms = distill_terms({"logits": torch.tensor(s)}, {"logits": torch.tensor(t)}, torch.tensor(1.7), cfg)
    expected = 0.3 * 4.0 * (_hand_kl(s[0], t[0], 2.0) + _hand_kl(s[1], t[1], 2.0)) / 2
    assert set(terms) == {"task", "kd_logits"}
    assert terms["kd_logits"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["task"].item() == pytest.approx(0.7 * 1.7)


def test_regression_head_uses_mse_and_qa_averages_both_ends():
    cfg = DistillConfig(alpha=1.0, temperature=3.0)
    s, t = torch.tensor([[0.5], [2.0]]), torch.tensor([[1.0], [1.0]])
    reg = distill_terms({"logits": s}, {"logits": t}, None, cfg)
    assert "task" not in reg  # no task loss: pure distillation
    assert reg["kd_logits"].item() == pytest.approx((0.25 + 1.0) / 2)

    ss, ts = [[1.0, 0.0, -1.0, 2.0]], [[0.0, 1.0, 0.0, 0.0]]
    se, te = [[0.0, 0.0, 3.0, 1.0]], [[2.0, 0.0, 0.0, 1.0]]
    qa = distill_terms(
        {"start_logits": torch.tensor(ss), "end_logits": torch.tensor(se)},
        {"start_logits": torch.tensor(ts), "end_logits": torch.tensor(te)},
        None,
        cfg,
    )
    expected = 9.0 * (_hand_kl(ss[0], ts[0], 3.0) + _hand_kl(se[0], te[0], 3.0)) / 2
    assert qa["kd_logits"].item() == pytest.approx(expected, rel=1e-5)


def _bert_outputs(seed: int, model=None):
    model = model or tiny_model("bert", seed=seed)
    return model(**tiny_inputs("bert"), output_hidden_states=True, output_attentions=True)


def test_mlpruning_form_is_expressible_and_terms_sum():
    """METHODS.md 3e: 0.9 * (T^2 KL + sum MSE(hidden) + sum MSE(attn)) + 0.1 * CE == alpha 0.9, weights 1, T 2."""
    student, teacher = _bert_outputs(0), _bert_outputs(1)
    ce = torch.tensor(0.8)
    cfg = DistillConfig(alpha=0.9, temperature=2.0, hidden_weight=1.0, attention_weight=1.0)
    terms = distill_terms(student, teacher, ce, cfg)
    assert set(terms) == {"task", "kd_logits", "kd_hidden", "kd_attention"}

    # the reference loss, written as MLPruning's masked_run_glue.py computes it (same depth: identity map)
    kl = F.kl_div(F.log_softmax(student.logits / 2, -1), F.softmax(teacher.logits / 2, -1), reduction="batchmean") * (
        2**2
    )
    rep = sum(F.mse_loss(s, t) for s, t in zip(student.hidden_states, teacher.hidden_states, strict=True))
    att = sum(F.mse_loss(s, t) for s, t in zip(student.attentions, teacher.attentions, strict=True))
    reference = 0.9 * (kl + rep + att) + 0.1 * ce
    total = sum(terms.values())
    assert total.item() == pytest.approx(reference.item(), rel=1e-5)
    assert terms["kd_hidden"].item() == pytest.approx(0.9 * rep.item(), rel=1e-5)
    assert terms["kd_attention"].item() == pytest.approx(0.9 * att.item(), rel=1e-5)


def test_zero_when_student_equals_teacher():
    out = _bert_outputs(0)
    cfg = DistillConfig(alpha=0.5, hidden_weight=2.0, attention_weight=3.0)
    terms = distill_terms(out, out, torch.tensor(1.0), cfg)
    for key in ("kd_logits", "kd_hidden", "kd_attention"):
        assert terms[key].abs().item() < 1e-6
    assert terms["task"].item() == pytest.approx(0.5)


def test_gradient_reaches_the_student_only():
    student, teacher = tiny_model("bert", seed=0).train(), tiny_model("bert", seed=1).train()
    cfg = DistillConfig(alpha=0.7, hidden_weight=1.0, attention_weight=1.0)
    batch = {**tiny_inputs("bert"), "labels": torch.tensor([0, 2])}
    s_out = student(**batch, output_hidden_states=True, output_attentions=True)
    t_out = teacher(**batch, output_hidden_states=True, output_attentions=True)  # with grad on purpose
    total = sum(distill_terms(s_out, t_out, s_out.loss, cfg).values())
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad is not None
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_teacher_outputs_match_the_config():
    teacher = tiny_model("bert", seed=1)
    batch = {**tiny_inputs("bert"), "labels": torch.tensor([0, 1]), "output_hidden_states": True}
    out = teacher_outputs(teacher, batch, DistillConfig(attention_weight=1.0))
    assert out.attentions is not None and out.hidden_states is None and out.loss is None
    assert not out.logits.requires_grad
    assert needs_attentions(DistillConfig(attention_weight=1.0)) and not needs_hidden(DistillConfig())


def test_causal_lm_masking_ignores_minus_100_positions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 4, 5, 6], [-100, 7, 8, -100, -100]])
    mask = kd_token_mask(labels)
    # position i predicts labels[i + 1]; the last position predicts nothing
    assert mask.tolist() == [[False, True, True, True, False], [True, True, False, False, False]]
    cfg = DistillConfig(alpha=1.0, temperature=1.5)
    got = distill_terms({"logits": s}, {"logits": t}, None, cfg, labels_mask=mask)["kd_logits"]
    rows = [(b, i) for b in range(2) for i in range(5) if mask[b, i]]
    hand = sum(_hand_kl(s[b, i].tolist(), t[b, i].tolist(), 1.5) for b, i in rows) / len(rows) * 1.5**2
    assert got.item() == pytest.approx(hand, rel=1e-5)
    s2 = s.clone()
    s2[~mask] = 100 * torch.randn_like(s2[~mask])  # ignored positions can be anything
    again = distill_terms({"logits": s2}, {"logits": t}, None, cfg, labels_mask=mask)["kd_logits"]
    assert again.item() == pytest.approx(got.item(), rel=1e-6)
    attention = torch.tensor([[1, 1, 1, 0, 0]])
    assert kd_token_mask(None, attention).tolist() == [[True, True, True, False, False]]


def test_default_layer_map_spacing():
    assert default_layer_map(6, 12) == [1, 3, 5, 7, 9, 11]  # last teacher block of each pair, as MLPruning
    assert default_layer_map(4, 12) == [2, 5, 8, 11]
    assert default_layer_map(3, 3) == [0, 1, 2]


def test_layer_map_pairs_hidden_states_after_the_embeddings():
    torch.manual_seed(0)
    s_hs = [torch.randn(2, 3, 4) for _ in range(4)]  # embeddings + 3 blocks
    t_hs = [torch.randn(2, 3, 4) for _ in range(7)]  # embeddings + 6 blocks
    student, teacher = (
        {"logits": torch.zeros(2, 2), "hidden_states": s_hs},
        {"logits": torch.zeros(2, 2), "hidden_states": t_hs},
    )
    got = distill_terms(student, teacher, None, DistillConfig(alpha=1.0, hidden_weight=1.0))
    # default map [1, 3, 5]: student block i output (hidden_states[i + 1]) <- teacher hidden_states[map[i] + 1]
    hand = sum(F.mse_loss(s_hs[i], t_hs[j]) for i, j in [(0, 0), (1, 2), (2, 4), (3, 6)])
    assert got["kd_hidden"].item() == pytest.approx(hand.item(), rel=1e-6)
    custom = DistillConfig(alpha=1.0, hidden_weight=1.0, layer_map=[0, 0, 5])
    got = distill_terms(student, teacher, None, custom)
    hand = sum(F.mse_loss(s_hs[i], t_hs[j]) for i, j in [(0, 0), (1, 1), (2, 1), (3, 6)])
    assert got["kd_hidden"].item() == pytest.approx(hand.item(), rel=1e-6)
    with pytest.raises(UsageError, match="layer_map has 2 entries"):
        distill_terms(student, teacher, None, DistillConfig(hidden_weight=1, layer_map=[0, 1]))


def test_pruned_heads_skip_attention_layers_but_keep_hidden_states():
    teacher = tiny_model("bert", seed=0)
    masks = MaskSet()
    masks.layer(1).heads = torch.tensor([True, False, True, True])
    masks.layer(2).neurons = torch.arange(48) % 2 == 0
    student = compact(tiny_model("bert", seed=0), masks)
    s, t = _bert_outputs(0, student), _bert_outputs(0, teacher)
    assert s.attentions[1].shape != t.attentions[1].shape
    cfg = DistillConfig(alpha=1.0, hidden_weight=1.0, attention_weight=1.0)
    terms = distill_terms(s, t, None, cfg)
    att = sum(F.mse_loss(s.attentions[i], t.attentions[i]) for i in (0, 2))
    hid = sum(F.mse_loss(a, b) for a, b in zip(s.hidden_states, t.hidden_states, strict=True))
    assert terms["kd_attention"].item() == pytest.approx(att.item(), rel=1e-5, abs=1e-9)
    assert terms["kd_hidden"].item() == pytest.approx(hid.item(), rel=1e-5)
    assert terms["kd_hidden"].item() > 0  # pruning changed the function


def test_config_errors():
    with pytest.raises(ValidationError):
        DistillConfig(alhpa=0.5)
    with pytest.raises(ValidationError):
        DistillConfig(alpha=1.5)
    with pytest.raises(UsageError, match="output_hidden_states"):
        distill_terms(
            {"logits": torch.zeros(1, 2)}, {"logits": torch.zeros(1, 2)}, None, DistillConfig(hidden_weight=1)
        )
    hs = [torch.zeros(1, 2, 4)] * 3
    no_probs = {"logits": torch.zeros(1, 2), "hidden_states": hs, "attentions": ()}  # what sdpa returns
    with pytest.raises(UsageError, match="eager"):
        distill_terms(no_probs, no_probs, None, DistillConfig(attention_weight=1))


def test_relative_hidden_kd_is_the_mse_over_the_teachers_mean_square_and_scale_free():
    """Pre-norm residual streams carry dimensions thousands of times the rest: the relative form must not grow
    with that scale, and each layer must count by its error relative to the teacher's own size."""
    student, teacher = _bert_outputs(0), _bert_outputs(1)
    plain = DistillConfig(alpha=1.0, hidden_weight=1.0, hidden_norm="none")
    rel = DistillConfig(alpha=1.0, hidden_weight=1.0, hidden_norm="teacher")
    expected = sum(
        F.mse_loss(s, t) / t.pow(2).mean() for s, t in zip(student.hidden_states, teacher.hidden_states, strict=True)
    )
    got = distill_terms(student, teacher, None, rel)["kd_hidden"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    scaled = [
        {"logits": o.logits, "hidden_states": tuple(1000 * h for h in o.hidden_states)} for o in (student, teacher)
    ]
    assert distill_terms(*scaled, None, rel)["kd_hidden"].item() == pytest.approx(got.item(), rel=1e-4)
    before = distill_terms(student, teacher, None, plain)["kd_hidden"].item()
    assert distill_terms(*scaled, None, plain)["kd_hidden"].item() == pytest.approx(1e6 * before, rel=1e-4)
    # an unresolved auto is the plain form (the paper's), so direct callers keep what they had
    auto = DistillConfig(alpha=1.0, hidden_weight=1.0)
    assert distill_terms(student, teacher, None, auto)["kd_hidden"].item() == pytest.approx(before, rel=1e-6)


def test_hidden_norm_auto_is_relative_for_pre_norm_families_only():
    from prunekit.train.distill import resolve_hidden_norm

    auto = DistillConfig(hidden_weight=1.0)
    for family, expected in (("llama", "teacher"), ("gpt2", "teacher"), ("bert", "none"), ("mpnet", "none")):
        assert resolve_hidden_norm(auto, describe(tiny_model(family)).pre_norm).hidden_norm == expected
    fixed = DistillConfig(hidden_weight=1.0, hidden_norm="none")
    assert resolve_hidden_norm(fixed, pre_norm=True).hidden_norm == "none"
    with pytest.raises(ValidationError):
        DistillConfig(hidden_norm="layer")


def test_the_pipeline_resolves_hidden_norm_for_the_student():
    from prunekit.pipelines.stages import load_teacher
    from prunekit.recipe import Recipe

    recipe = Recipe(distill={"teacher": "dense", "hidden_weight": 1.0})
    for family, expected in (("llama", "teacher"), ("bert", "none")):
        teacher, cfg = load_teacher(recipe, tiny_model(family), None)
        assert cfg.hidden_norm == expected and teacher is not None
    explicit = Recipe(distill={"teacher": "dense", "hidden_weight": 1.0, "hidden_norm": "none"})
    assert load_teacher(explicit, tiny_model("llama"), None)[1].hidden_norm == "none"
