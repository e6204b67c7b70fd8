"""Use any prunekit method inside an existing `transformers.Trainer` script.

Replace `Trainer(...)` with `PrunekitTrainer(..., method=create_method("movement", {...}))` (or mix
`PrunekitMixin` into your own Trainer subclass), train as usual, then `finalize_and_compact(trainer)`.
The subclass is needed, not just a callback, because a method's extra parameters (scores,
thresholds) must reach the optimizer when it is built and its loss terms must reach the loss;
callbacks see neither. `PrunekitCallback` drives the rest (masks after every optimizer step, epoch
hooks, method state in checkpoints) and alone suffices for methods without loss terms or extra
parameters (e.g. gradual magnitude pruning).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from prunekit.compact.remove import compact
from prunekit.core.errors import UsageError
from prunekit.methods.base import Method
from prunekit.topology import describe
from prunekit.train.distill import (
    DistillConfig,
    distill_terms,
    kd_token_mask,
    needs_attentions,
    needs_hidden,
    resolve_hidden_norm,
    teacher_outputs,
)

METHOD_STATE_FILE = "prunekit_method.pt"


class PrunekitCallback(TrainerCallback):
    """Runs the method's hooks at the Trainer's events.

    init end / train begin: attach the method (if not yet) and write its masks into the weights;
    step end: `on_step(global_step, max_steps)` then `enforce_masks` (masked weights stay exactly zero,
    whatever AdamW's weight decay and momentum do); epoch end: `on_epoch_end(epoch)` (0-based);
    save: the method's state beside each checkpoint. Values the hooks return are logged.
    """

    def __init__(self, method: Method) -> None:
        self.method = method
        self.managed = False  # True under PrunekitMixin, which adds parameter groups and loss terms itself
        self.pending: dict[str, float] = {}

    def _attach(self, model: nn.Module | None) -> None:
        if model is not None and self.method.model is None:
            self.method.attach(model, describe(model))

    def on_init_end(self, args, state, control, model: nn.Module | None = None, **kwargs: Any) -> None:
        self._attach(model)  # before the optimizer exists, so parameters the method adds to the model are trained

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, optimizer=None, **kwargs) -> None:
        self._attach(model)
        self._check(optimizer)
        if model is not None:
            self.method.enforce_masks(model)

    def _check(self, optimizer) -> None:
        """Refuse to train rather than silently drop the method's loss terms or parameters."""
        hint = (
            "let PrunekitTrainer build the optimizer, or put method.parameter_groups() in yours"
            if self.managed
            else "use prunekit.integrations.PrunekitTrainer (or PrunekitMixin) instead of a plain Trainer"
        )
        if not self.managed and type(self.method).loss_terms is not Method.loss_terms:
            raise UsageError(f"method '{self.method.name}' adds loss terms that a callback cannot add: {hint}")
        if optimizer is not None:
            in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
            if any(id(p) not in in_opt for g in self.method.parameter_groups() for p in g["params"]):
                raise UsageError(f"method '{self.method.name}' trains parameters the optimizer does not have: {hint}")

    def on_step_end(self, args, state, control, model: nn.Module | None = None, **kwargs: Any) -> None:
        self.pending.update(self.method.on_step(state.global_step, state.max_steps) or {})
        if model is not None:
            self.method.enforce_masks(model)

    def on_epoch_end(self, args, state, control, model: nn.Module | None = None, **kwargs: Any) -> None:
        epoch = max(math.ceil(state.epoch or 0) - 1, 0)
        self.pending.update(self.method.on_epoch_end(epoch) or {})
        if model is not None:
            self.method.enforce_masks(model)

    def on_save(self, args, state, control, **kwargs: Any) -> None:
        if args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                torch.save(self.method.state_dict(), os.path.join(folder, METHOD_STATE_FILE))

    def on_log(self, args, state, control, logs: dict | None = None, **kwargs: Any) -> None:
        # under PrunekitMixin the values went in before the reporters saw the line (see PrunekitMixin.log)
        if not self.managed and self.pending and logs is not None and not _is_eval_log(logs):
            values = self.pop_logs()
            logs.update(values)
            if state.log_history:
                state.log_history[-1].update(values)

    def pop_logs(self) -> dict[str, float]:
        values, self.pending = self.pending, {}
        return {k: float(v) for k, v in values.items()}


def _is_eval_log(logs: dict) -> bool:
    return any(k.startswith(("eval_", "test_")) for k in logs)


class PrunekitMixin:
    """Adds a prunekit method (and optionally distillation from a teacher) to a `transformers.Trainer` class.

    `method` is attached to the model at construction, before the optimizer exists; its
    `parameter_groups()` join the optimizer (weight decay 0 unless the group says otherwise) and its
    `loss_terms()` join the training loss, each logged as `loss_<name>` (averaged between log lines).
    With `teacher` (a model, already loaded), the loss becomes `distill_terms(...)` of `distill`;
    attention distillation switches both models to eager attention (the only one that returns the
    probabilities). Evaluation losses stay the plain task loss.
    """

    def __init__(
        self,
        *args: Any,
        method: Method,
        teacher: nn.Module | None = None,
        distill: DistillConfig | dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise UsageError("PrunekitTrainer needs a model (model_init is not supported)")
        if method.calibration_examples() > 0:
            raise UsageError(
                f"method '{method.name}' prunes once from calibration data before training: run it with "
                "`prunekit prune` (this Trainer drives methods that prune while training)"
            )
        self.method = method
        if method.model is not self.model:
            method.attach(self.model, describe(self.model))
        self.prunekit_callback = PrunekitCallback(method)
        self.prunekit_callback.managed = True
        self.add_callback(self.prunekit_callback)
        if distill is not None and teacher is None:
            raise UsageError("distillation needs a teacher model: pass teacher=...")
        self.distill = distill if isinstance(distill, DistillConfig) else DistillConfig.model_validate(distill or {})
        self.distill = resolve_hidden_norm(self.distill, describe(self.model).pre_norm)
        self.teacher = teacher
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            if needs_attentions(self.distill):  # sdpa / flash attention return no attention probabilities
                for m in (self.model, self.teacher):
                    if getattr(m.config, "_attn_implementation", "eager") != "eager":
                        m.set_attn_implementation("eager")
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0

    # ------------------------------------------------------------------ optimizer

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer plus the method's groups; the method's parameters leave the default groups."""
        if self.optimizer is not None:  # given by the user: the callback checks it holds the method's parameters
            return super().create_optimizer(model)
        if getattr(self.state, "max_steps", 0) > 0:  # train() has counted the steps by now
            self.method.planned_steps = self.state.max_steps
        groups = [{**g, "params": list(g["params"])} for g in self.method.parameter_groups()]
        groups = [g for g in groups if g["params"]]
        extra = {id(p) for g in groups for p in g["params"]}
        opt_model = self.model if model is None else model
        hidden = [p for p in opt_model.parameters() if id(p) in extra and p.requires_grad]
        for p in hidden:  # the default grouping skips frozen parameters: keep it from taking (and decaying) them
            p.requires_grad_(False)
        try:
            optimizer = super().create_optimizer(model)
        finally:
            for p in hidden:
                p.requires_grad_(True)
        for g in groups:
            g.setdefault("weight_decay", 0.0)
            optimizer.add_param_group(g)
        return optimizer

    # ------------------------------------------------------------------ loss

    def _loss_scale(self, num_items_in_batch: Any) -> float:
        """1 / accumulation steps when the Trainer will not divide the loss itself (it was token-normalised)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        return 1.0 / max(getattr(self, "current_gradient_accumulation_steps", 1), 1) if scaled else 1.0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        training = model.training
        kd = training and self.teacher is not None
        if kd:
            if needs_hidden(self.distill):
                inputs = {**inputs, "output_hidden_states": True}
            if needs_attentions(self.distill):
                inputs = {**inputs, "output_attentions": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if not training:
            return (loss, outputs) if return_outputs else loss
        scale = self._loss_scale(num_items_in_batch)
        terms: dict[str, torch.Tensor] = {}
        if kd:
            t_out = teacher_outputs(self.teacher, inputs, self.distill)
            logits = outputs.get("logits") if isinstance(outputs, dict) else None
            mask = (
                kd_token_mask(inputs.get("labels"), inputs.get("attention_mask"))
                if logits is not None and logits.dim() == 3
                else None
            )
            kd_terms = distill_terms(outputs, t_out, None, self.distill, labels_mask=mask)
            task = (1 - self.distill.alpha) * loss
            loss = task + scale * sum(kd_terms.values())
            terms["task"] = task
            terms.update(kd_terms)
        method_terms = self.method.loss_terms(self.model, inputs, outputs)
        if method_terms:
            loss = loss + scale * sum(method_terms.values())
            terms.update(method_terms)
        for k, v in terms.items():
            v = v.detach().float()
            self._term_sums[k] = self._term_sums[k] + v if k in self._term_sums else v
        self._term_count += 1
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ logging and resuming

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the loss terms' means since the last line and the method's logged values to training lines."""
        if not _is_eval_log(logs):
            if self._term_count:
                for k, v in self._term_sums.items():
                    logs[f"loss_{k}"] = round(float(v) / self._term_count, 6)
                self._term_sums, self._term_count = {}, 0
            logs.update(self.prunekit_callback.pop_logs())
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """As Trainer.train; a resumed run also gets the method's state back from the checkpoint."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise UsageError(f"no checkpoint to resume in {self.args.output_dir}")
        if isinstance(resume_from_checkpoint, str):
            path = os.path.join(resume_from_checkpoint, METHOD_STATE_FILE)
            if os.path.isfile(path):
                self.method.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


class PrunekitTrainer(PrunekitMixin, Trainer):
    """`transformers.Trainer` with a prunekit method: `PrunekitTrainer(model, args, ..., method=method)`."""


def _find_method(trainer: Trainer) -> Method:
    method = getattr(trainer, "method", None)
    if isinstance(method, Method):
        return method
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, PrunekitCallback):
            return cb.method
    raise UsageError("this trainer has no prunekit method: pass method=... or use PrunekitTrainer")


def finalize_and_compact(trainer: Trainer, method: Method | None = None) -> nn.Module:
    """After training: the method's final masks, physically removed from the trainer's model (in place).

    Returns the compacted model (also `trainer.model`). The optimizer and scheduler are dropped: they
    hold the removed parameters. A method whose final masks are fine-grained only leaves zeros in place.
    """
    method = method or _find_method(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    masks = method.finalize(model)
    if masks is not None:
        compact(model, masks)
    trainer.model = trainer.model_wrapped = model
    trainer.optimizer = trainer.lr_scheduler = None
    return model
