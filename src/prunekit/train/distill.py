"""Knowledge distillation from a (dense) teacher into the model being pruned.

The loss is a sum of named terms, so each one is logged on its own:

    task          (1 - alpha) * task_loss
    kd_logits     alpha * T^2 * KL(softmax(t / T) || softmax(s / T))      (MSE for regression heads)
    kd_hidden     alpha * hidden_weight * sum over matched layers of MSE(hidden states)
                  (each divided by the teacher's mean square of that layer when `hidden_norm` is teacher)
    kd_attention  alpha * attention_weight * sum over matched layers of MSE(attention probabilities)

Each MSE is the element mean of one layer's tensors; layers are summed, not averaged, which is the
MLPruning form (METHODS.md 3e, `0.9 * (T^2 KL + sum MSE(hidden) + sum MSE(attn)) + 0.1 * CE`, T = 2):
that loss is exactly `DistillConfig(alpha=0.9, temperature=2, hidden_weight=1, attention_weight=1)`.

Layer convention (as MLPruning / TinyBERT): blocks are numbered from 0 and student block i learns
from teacher block `layer_map[i]`. HF `hidden_states[0]` is the embedding output, so the student's
`hidden_states[i + 1]` is matched with the teacher's `hidden_states[layer_map[i] + 1]` and the
embeddings with the embeddings; `attentions[i]` with the teacher's `attentions[layer_map[i]]`. The
default map spaces the student uniformly and takes the last teacher block of each group: 6 from
12 gives [1, 3, 5, 7, 9, 11]; a pruned model of the teacher's depth gets the identity.

Hidden-state MSE assumes hidden states of unit scale, as a post-norm encoder's are (BERT, MPNet: every
block ends in LayerNorm). A pre-norm decoder's hidden states are its unnormalised residual stream (Llama,
GPT-2), with a few dimensions thousands of times larger than the rest: there the plain MSE of one
pruned unit reached 1e5 on SmolLM2-135M and outweighed every other term, so MLPruning's thresholds
were pushed back to keeping everything. `hidden_norm: auto` (the default) therefore divides each
layer's MSE by the teacher's mean square of that layer for pre-norm families, and leaves post-norm
ones as the paper has them.

Hidden and attention terms only use layers whose shapes agree: pruning heads changes a layer's
attention shape (that layer is skipped), pruning heads or neurons keeps the hidden size.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from prunekit.core.errors import UsageError


class DistillConfig(BaseModel):
    """Distillation recipe section; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    teacher: str | None = None  # run directory or model name (resolved by the caller)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the soft (teacher) terms; the task loss gets 1 - alpha
    temperature: float = Field(2.0, gt=0)
    hidden_weight: float = Field(0.0, ge=0)  # MSE between hidden states (where shapes match)
    attention_weight: float = Field(0.0, ge=0)  # MSE between attention probabilities (where shapes match)
    layer_map: list[int] | None = None  # student block i <- teacher block layer_map[i]; default: uniform spacing
    # hidden MSE relative to the teacher's mean square per layer (`teacher`), plain (`none`), or by family (`auto`:
    # teacher for pre-norm decoders, whose hidden states are the unnormalised residual stream). The trainers
    # resolve auto with resolve_hidden_norm; distill_terms given an unresolved auto uses the plain form
    hidden_norm: Literal["auto", "none", "teacher"] = "auto"


def resolve_hidden_norm(cfg: DistillConfig, pre_norm: bool) -> DistillConfig:
    """`cfg` with `hidden_norm: auto` made concrete for a student that is (or is not) pre-norm (Topology.pre_norm)."""
    if cfg.hidden_norm != "auto":
        return cfg
    return cfg.model_copy(update={"hidden_norm": "teacher" if pre_norm else "none"})


def needs_hidden(cfg: DistillConfig) -> bool:
    """Whether both models must run with output_hidden_states=True."""
    return cfg.hidden_weight > 0


def needs_attentions(cfg: DistillConfig) -> bool:
    """Whether both models must run with output_attentions=True (needs attn_implementation='eager')."""
    return cfg.attention_weight > 0


def default_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Uniform spacing, last teacher block of each group: student block i <- teacher (i + 1) * T // S - 1."""
    if student_layers <= 0 or teacher_layers <= 0:
        return []
    return [max((i + 1) * teacher_layers // student_layers - 1, 0) for i in range(student_layers)]


def resolve_layer_map(cfg: DistillConfig, student_layers: int, teacher_layers: int) -> list[int]:
    """The configured map checked against the models' depths, or the default one."""
    if cfg.layer_map is None:
        return default_layer_map(student_layers, teacher_layers)
    if len(cfg.layer_map) != student_layers:
        raise UsageError(
            f"distill.layer_map has {len(cfg.layer_map)} entries but the student has {student_layers} layers"
        )
    bad = [j for j in cfg.layer_map if not 0 <= j < teacher_layers]
    if bad:
        raise UsageError(f"distill.layer_map refers to teacher layer {bad[0]}; the teacher has {teacher_layers}")
    return list(cfg.layer_map)


def kd_token_mask(
    labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *, causal: bool = True
) -> torch.Tensor | None:
    """The (B, L) mask of logit positions a token-level KL should average over.

    With labels, a causal LM's position t predicts labels[t + 1] (HF shifts inside the loss), so t counts
    where labels[t + 1] != -100 and the last position never counts; without labels, the attention mask.
    """
    if labels is not None:
        valid = labels != -100
        if not causal:
            return valid
        mask = torch.zeros_like(valid)
        mask[:, :-1] = valid[:, 1:]
        return mask
    return attention_mask.bool() if attention_mask is not None else None


def _get(out: Any, key: str) -> Any:
    if isinstance(out, dict):  # ModelOutput is an OrderedDict
        return out.get(key)
    if isinstance(out, tuple | list):
        raise UsageError("distillation needs model outputs with names: call the models with return_dict=True")
    return getattr(out, key, None)


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None) -> torch.Tensor:
    """T^2 * KL(teacher || student) over the last axis, averaged over the other positions (those in `mask`)."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_row = F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    if mask is not None:
        if mask.shape != per_row.shape:
            raise UsageError(f"labels_mask has shape {tuple(mask.shape)}, the logits' positions {tuple(per_row.shape)}")
        m = mask.to(per_row.device, per_row.dtype)
        mean = (per_row * m).sum() / m.sum().clamp_min(1)
    else:
        mean = per_row.mean()
    return mean * temperature**2


def logits_kd(
    student_out: Any, teacher_out: Any, temperature: float, labels_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The unweighted logit term: KL for classification / QA / LM heads, MSE for a regression head."""
    s_logits, t_logits = _get(student_out, "logits"), _get(teacher_out, "logits")
    if s_logits is not None and t_logits is not None:
        t_logits = t_logits.detach()
        if s_logits.shape != t_logits.shape:
            raise UsageError(
                f"student logits {tuple(s_logits.shape)} and teacher logits {tuple(t_logits.shape)} differ: "
                "distillation needs the same head and inputs"
            )
        if s_logits.shape[-1] == 1:  # regression (num_labels == 1): no distribution to match
            return F.mse_loss(s_logits.float(), t_logits.float())
        return _kl(s_logits, t_logits, temperature, labels_mask if s_logits.dim() == 3 else None)
    starts = (_get(student_out, "start_logits"), _get(teacher_out, "start_logits"))
    ends = (_get(student_out, "end_logits"), _get(teacher_out, "end_logits"))
    if None not in starts and None not in ends:  # extractive QA: a distribution over positions for each end
        kl_start = _kl(starts[0], starts[1].detach(), temperature, None)
        kl_end = _kl(ends[0], ends[1].detach(), temperature, None)
        return (kl_start + kl_end) / 2
    raise UsageError("distillation needs 'logits' (or 'start_logits' and 'end_logits') in both models' outputs")


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros((), dtype=torch.float32)


def hidden_kd(
    student_out: Any, teacher_out: Any, layer_map: list[int] | None = None, relative: bool = False
) -> torch.Tensor | None:
    """Sum over matched layers (embeddings included) of the MSE of hidden states, each over the teacher's mean
    square of that layer when `relative`; None without hidden states."""
    s_hs, t_hs = _get(student_out, "hidden_states"), _get(teacher_out, "hidden_states")
    if s_hs is None or t_hs is None:
        return None
    pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(layer_map or [])]
    total = _zero(s_hs[0])
    for i, j in pairs:
        s, t = s_hs[i], t_hs[j]
        if s is not None and t is not None and s.shape == t.shape:
            t = t.detach().float()
            term = F.mse_loss(s.float(), t)
            total = total + (term / t.pow(2).mean().clamp_min(1e-12) if relative else term)
    return total


def attention_kd(student_out: Any, teacher_out: Any, layer_map: list[int] | None = None) -> torch.Tensor | None:
    """Sum over matched layers of the MSE of attention probabilities; None without attentions."""
    s_att, t_att = _get(student_out, "attentions"), _get(teacher_out, "attentions")
    if s_att is None or t_att is None:
        return None
    if len(s_att) < len(layer_map or []) or len(t_att) <= max(layer_map or [-1]):
        raise UsageError(
            "attention distillation needs attention probabilities from both models: load them with "
            "attn_implementation='eager' (sdpa and flash attention return none)"
        )
    total: torch.Tensor | None = None
    for i, j in enumerate(layer_map or []):
        s, t = s_att[i], t_att[j]
        if s is not None and t is not None and s.shape == t.shape:  # pruned heads change the shape: skip
            term = F.mse_loss(s.float(), t.detach().float())
            total = term if total is None else total + term
    if total is None:
        first = next((a for a in s_att if a is not None), None)
        return _zero(first) if first is not None else None
    return total


def _depth(out: Any) -> int | None:
    hs, att = _get(out, "hidden_states"), _get(out, "attentions")
    if hs is not None:
        return len(hs) - 1
    return len(att) if att is not None else None


def distill_terms(
    student_out: Any,
    teacher_out: Any,
    task_loss: torch.Tensor | None,
    cfg: DistillConfig,
    *,
    labels_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Named loss terms whose sum is the training loss (see the module docstring for the formulas).

    Teacher outputs are detached, so gradients reach the student only. `task_loss` None means pure
    distillation (unlabelled data): no `task` term. `labels_mask` (B, L) selects the positions of a
    token-level (causal LM) KL, e.g. `kd_token_mask(labels)`; without it every position counts.
    kd_hidden / kd_attention are present when their weight is non-zero; they need the models run with
    output_hidden_states / output_attentions (`needs_hidden`, `needs_attentions`).
    """
    terms: dict[str, torch.Tensor] = {}
    if task_loss is not None:
        terms["task"] = (1 - cfg.alpha) * task_loss
    terms["kd_logits"] = cfg.alpha * logits_kd(student_out, teacher_out, cfg.temperature, labels_mask)
    layer_map: list[int] | None = None
    if cfg.hidden_weight > 0 or cfg.attention_weight > 0:
        s_depth, t_depth = _depth(student_out), _depth(teacher_out)
        if s_depth is not None and t_depth is not None:
            layer_map = resolve_layer_map(cfg, s_depth, t_depth)
    relative = cfg.hidden_norm == "teacher"
    for key, weight, fn, flag in (
        ("kd_hidden", cfg.hidden_weight, lambda s, t, m: hidden_kd(s, t, m, relative), "output_hidden_states"),
        ("kd_attention", cfg.attention_weight, attention_kd, "output_attentions"),
    ):
        if weight > 0:
            value = fn(student_out, teacher_out, layer_map)
            if value is None:
                raise UsageError(f"distill.{key[3:]}_weight > 0 needs both models run with {flag}=True")
            terms[key] = cfg.alpha * weight * value
    return terms


def teacher_outputs(teacher: torch.nn.Module, batch: dict, cfg: DistillConfig) -> Any:
    """The teacher's forward on the student's batch, without gradients and with the outputs `cfg` needs."""
    skip = ("labels", "num_items_in_batch", "output_hidden_states", "output_attentions", "return_dict")
    inputs = {k: v for k, v in batch.items() if k not in skip}
    flags = {"output_hidden_states": needs_hidden(cfg), "output_attentions": needs_attentions(cfg)}
    with torch.no_grad():
        return teacher(**inputs, **{k: v for k, v in flags.items() if v}, return_dict=True)
