"""The fine-tuning loop every method runs in, on Hugging Face `accelerate`.

The data order is a function of (seed, epoch) alone and the loop position is part of every checkpoint,
so a killed run resumes exactly where it stopped: same batches, same RNG states, same weights.
Under `accelerate launch` each process takes every world-th batch of that order; evaluation,
checkpoints and logs happen on the main process only.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize
from transformers import get_linear_schedule_with_warmup

from prunekit.compact.remove import compact
from prunekit.core.files import fault_point
from prunekit.masks import MaskSet, maskset_from_state, maskset_state, sparsity_report
from prunekit.methods.base import Method
from prunekit.topology import describe
from prunekit.train import checkpoint as ckpt
from prunekit.train.config import TrainConfig
from prunekit.train.distill import distill_terms, kd_token_mask, needs_attentions, needs_hidden

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_1.weight", "ln_2.weight", "ln_f")


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # evaluation records
    best: dict | None = None  # the evaluation record of the kept weights
    steps: int = 0
    train_s: float = 0.0
    # structure removed during the stage (a gradual method's heads / neurons once final): (step, masks, their
    # sparsity report on the model they were removed from), in order
    removed: list[tuple[int, MaskSet, dict]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def process_batches(n: int, cfg: TrainConfig, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches (example indices) for one epoch; equal counts on every process."""
    order = epoch_order(n, cfg.seed, epoch)
    batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    per = len(batches) // world if world > 1 else len(batches)
    return batches[rank::world][:per]


def steps_per_epoch(n: int, cfg: TrainConfig, world: int) -> int:
    return math.ceil(len(process_batches(n, cfg, 0, 0, world)) / cfg.grad_accum)


def _mixed_precision(cfg: TrainConfig, device: str) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _param_groups(model: nn.Module, method: Method, weight_decay: float) -> list[dict]:
    extra = [{"weight_decay": 0.0} | g for g in method.parameter_groups()]  # scores never decay unless asked
    taken = {id(p) for g in extra for p in g["params"]}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in taken:
            continue
        (no_decay if any(k in name for k in NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups + extra if g["params"]]


def _attn_implementation(model: nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


class _Mean:
    """Running means of logged scalars between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, values: dict[str, float]) -> None:
        self.n += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return out


class Trainer:
    """Fine-tunes `model` on `task` while `method` prunes it. See `train()` for the one-call form."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        task,
        data,
        *,
        method: Method | None = None,
        config: TrainConfig | None = None,
        work_dir: str | Path,
        teacher: nn.Module | None = None,
        distill=None,
        progress: bool = True,
        stage: str = "train",
    ) -> None:
        self.cfg = config or TrainConfig()
        self.method = method or Method()  # the protocol's no-ops: plain fine-tuning
        self.task, self.tokenizer, self.data = task, tokenizer, data
        self.work_dir = Path(work_dir)
        self.stage = stage
        self.teacher, self.distill = teacher, distill
        cpu = self.cfg.device == "cpu" or (self.cfg.device is None and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=_mixed_precision(self.cfg, "cpu" if cpu else "cuda"))
        self.progress = progress and self.accelerator.is_main_process
        seed_everything(self.cfg.seed)
        self.model = model
        self.method.attach(model, describe(model))
        self.features = task.features(data["train"], tokenizer, self.cfg.max_length)
        self.collate = task.collator(tokenizer)
        world = self.accelerator.num_processes
        self.steps_per_epoch = steps_per_epoch(len(self.features), self.cfg, world)
        total = self.steps_per_epoch * self.cfg.epochs
        self.total_steps = min(total, self.cfg.max_steps) if self.cfg.max_steps else total
        self.method.planned_steps = self.total_steps
        self.optimizer, self.scheduler = self._optimizer(model)
        self._student_attn = None
        # sdpa returns no attention probabilities: distil them with eager
        if teacher is not None and distill is not None and needs_attentions(distill):
            self._student_attn = _attn_implementation(model)
            for m in (model, teacher):
                if _attn_implementation(m) != "eager":
                    m.set_attn_implementation("eager")
        self.wrapped, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        if teacher is not None:
            self.teacher = teacher.to(self.accelerator.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.step = 0
        self.removed: list[tuple[int, MaskSet, dict]] = []
        self.history: list[dict] = []
        self.best: dict | None = None
        self.train_s = 0.0
        self._last_loss: float | None = None
        self.log_path = self.work_dir / "metrics.jsonl"
        self.ckpt_dir = self.work_dir / "checkpoints" / stage
        self.best_dir = self.work_dir / "best" / stage

    def _optimizer(self, model: nn.Module, at_step: int = 0):
        """AdamW over the model's (and the method's) parameters, with the linear schedule at step `at_step`."""
        optimizer = torch.optim.AdamW(_param_groups(model, self.method, self.cfg.weight_decay), lr=self.cfg.lr)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        warmup = int(self.cfg.warmup_ratio * self.total_steps)
        return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, max(self.total_steps, 1), at_step - 1)

    def _remove_structure(self, masks: MaskSet) -> dict:
        """Compact the model now (a gradual method's final heads / neurons), so the rest of the stage trains the
        smaller model; the optimizer starts afresh on the smaller parameters (its moments of removed units are
        meaningless, of kept ones a restart costs little), the learning-rate schedule goes on where it was."""
        model = self.accelerator.unwrap_model(self.wrapped)
        report = sparsity_report(model, masks, self.method.topo)
        with torch.no_grad():
            for module in model.modules():  # compaction needs plain weights: fold what a method parametrized
                if parametrize.is_parametrized(module):
                    for name in list(module.parametrizations):
                        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            compact(model, masks)
        self.method.structure_removed(model, describe(model))
        optimizer, self.scheduler = self._optimizer(model, at_step=self.scheduler.last_epoch)
        self.wrapped, self.optimizer = self.accelerator.prepare(model, optimizer)
        return report

    def _maybe_remove_structure(self) -> dict[str, float]:
        masks = self.method.final_structure(self.step, self.total_steps)
        if masks is None:
            return {}
        report = self._remove_structure(masks)
        self.removed.append((self.step, masks, report))
        if self.accelerator.is_main_process:
            kept = sparsity_report(self.accelerator.unwrap_model(self.wrapped))["kept"]
            print(f"{self.stage}: removed the final heads / neurons at step {self.step} ({kept:,} block weights "
                  "left): training goes on with the smaller model", file=sys.stderr)  # fmt: skip
        return {"removed_structure": float(report["sparsity"])}

    # ------------------------------------------------------------------ state

    def _state(self) -> tuple[dict, dict, dict]:
        trainer = {"step": self.step, "history": self.history, "best": self.best, "train_s": self.train_s}
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "method": self.method.state_dict(),
            "removed": [{"step": st, "masks": maskset_state(m)} for st, m, _ in self.removed],
        }
        return self.accelerator.unwrap_model(self.wrapped).state_dict(), trainer, extra

    def save_checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            model_state, trainer, extra = self._state()
            ckpt.save_checkpoint(
                self.ckpt_dir,
                self.step,
                model_state=model_state,
                trainer_state=trainer,
                extra=extra,
                keep=self.cfg.keep_checkpoints,
            )
        self.accelerator.wait_for_everyone()

    def resume(self) -> bool:
        """Load the newest usable checkpoint of this stage; False when there is none."""
        found = ckpt.latest_usable(self.ckpt_dir)
        if found is None:
            self._truncate_log()  # killed before this stage's first checkpoint: it starts over, so does its log
            return False
        _, (model_state, trainer, extra) = found
        for entry in extra.get("removed", []):  # the shapes the checkpoint was written at
            masks = maskset_from_state(entry["masks"])
            self.removed.append((entry["step"], masks, self._remove_structure(masks)))
        self._load_model_state(model_state)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        self.method.load_state_dict(extra["method"])
        ckpt.set_rng_state(extra["rng"])
        self.step, self.history, self.best = trainer["step"], trainer["history"], trainer["best"]
        self.train_s = trainer["train_s"]
        self._truncate_log()
        if self.accelerator.is_main_process:  # stderr: stdout is for results (`--json`)
            print(
                f"{self.stage}: resuming at step {self.step} of {self.total_steps} ({found[0].name})", file=sys.stderr
            )
        return True

    def _load_model_state(self, state: dict) -> None:
        model = self.accelerator.unwrap_model(self.wrapped)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or {})
        if [k for k in missing if k not in tied] or unexpected:
            raise RuntimeError(
                f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint, so a resumed log equals an uninterrupted one."""
        if not (self.accelerator.is_main_process and self.log_path.exists()):
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if rec.get("stage") != self.stage or rec.get("step", 0) <= self.step:
                keep.append(line)
        self.log_path.write_text("".join(x + "\n" for x in keep))

    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps({"stage": self.stage, **record}) + "\n")

    # ------------------------------------------------------------------ loop

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = self.wrapped(**batch, **self._output_flags())
        terms: dict[str, torch.Tensor] = {}
        if self.teacher is not None and self.distill is not None:
            with torch.no_grad():
                t_out = self.teacher(**batch, **self._output_flags())
            causal = self.task.kind in ("causal-lm", "summarization")
            mask = kd_token_mask(batch.get("labels"), batch.get("attention_mask")) if causal else None
            terms.update(distill_terms(outputs, t_out, outputs.loss, self.distill, labels_mask=mask))
        else:
            terms["task"] = outputs.loss
        terms.update(self.method.loss_terms(self.accelerator.unwrap_model(self.wrapped), batch, outputs))
        total = sum(terms.values())
        return total, {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def _output_flags(self) -> dict:
        if self.distill is None or self.teacher is None:
            return {}

        flags = {}
        if needs_hidden(self.distill):
            flags["output_hidden_states"] = True
        if needs_attentions(self.distill):
            flags["output_attentions"] = True
        return flags

    def _to_device(self, idx: list[int]) -> dict:
        batch = self.collate([self.features[i] for i in idx])
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def evaluate(self) -> dict | None:
        """Validation metrics on the main process (None elsewhere)."""
        record = None
        if self.accelerator.is_main_process and len(self.data.get("validation", [])):
            model = self.accelerator.unwrap_model(self.wrapped)
            metrics = self.task.evaluate(
                model,
                self.data["validation"],
                self.tokenizer,
                batch_size=self.cfg.eval_batch_size,
                max_length=self.cfg.max_length,
                device=self.accelerator.device,
                max_examples=self.cfg.eval_max_examples,
            )
            model.train()
            record = {"type": "eval", "split": "validation", "step": self.step, **metrics}
            record.update(self._sparsity())
            self.history.append(record)
            self.log(record)
            self._maybe_keep_best(record)
        self.accelerator.wait_for_everyone()
        return record

    def _sparsity(self) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.wrapped)
        return {"sparsity": round(sparsity_report(model, self.method.masks(), self.method.topo)["sparsity"], 5)}

    def _selectable(self) -> bool:
        return self.method.selectable(self.step, self.total_steps)

    def _maybe_keep_best(self, record: dict) -> None:
        if not (self.cfg.select_best and self._selectable()):
            return
        key = self.task.main_metric
        if key not in record:
            return
        better = self.best is None or (
            record[key] > self.best[key] if self.task.greater_is_better else record[key] < self.best[key]
        )
        if better:
            self.best = record
            self.best_dir.mkdir(parents=True, exist_ok=True)
            model = self.accelerator.unwrap_model(self.wrapped)
            tmp = self.best_dir / ".model.safetensors.tmp"
            save_file(ckpt.state_tensors(model.state_dict()), str(tmp))
            torch.save(self.method.state_dict(), self.best_dir / ".method.pt.tmp")
            tmp.replace(self.best_dir / "model.safetensors")
            (self.best_dir / ".method.pt.tmp").replace(self.best_dir / "method.pt")
            (self.best_dir / "record.json").write_text(json.dumps(record))

    def _restore_best(self) -> None:
        path = self.best_dir / "model.safetensors"
        if self.best is None or not path.exists():
            return
        self._load_model_state(load_file(str(path)))
        self.method.load_state_dict(torch.load(self.best_dir / "method.pt", weights_only=True))

    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to the end (or `stop_after` optimizer steps, to simulate a kill in tests)."""
        if resume:
            self.resume()
        self.wrapped.train()
        means = _Mean()
        progress, task_id = self._progress()
        start = time.perf_counter() - self.train_s
        n, world, rank = len(self.features), self.accelerator.num_processes, self.accelerator.process_index
        done = self.step >= self.total_steps
        with progress:
            while not done:
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                batches = process_batches(n, self.cfg, epoch, rank, world)
                groups = [batches[i : i + self.cfg.grad_accum] for i in range(0, len(batches), self.cfg.grad_accum)]
                for group in groups[in_epoch:]:
                    for j, idx in enumerate(group):
                        last = j == len(group) - 1
                        sync = nullcontext() if last else self.accelerator.no_sync(self.wrapped)
                        with sync:
                            loss, values = self._loss(self._to_device(idx))
                            self.accelerator.backward(loss / len(group))
                        means.add(values)
                        self._last_loss = values["loss"]
                    if self.cfg.max_grad_norm:
                        self.accelerator.clip_grad_norm_(self.wrapped.parameters(), self.cfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    fault_point("step")  # a test hook: inert unless PRUNEKIT_FAULT_AT is set
                    logged = self.method.on_step(self.step, self.total_steps)
                    self.method.enforce_masks(self.accelerator.unwrap_model(self.wrapped))
                    logged |= self._maybe_remove_structure()
                    self.train_s = time.perf_counter() - start
                    epoch_f = self.step / self.steps_per_epoch
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if end_of_epoch:  # before the log line, so what the method did at the epoch's end is logged
                        logged |= self.method.on_epoch_end(self.step // self.steps_per_epoch - 1) or {}
                    if self.step % self.cfg.log_every == 0 or self.step == self.total_steps or end_of_epoch:
                        self.log(
                            {"type": "train", "step": self.step, "epoch": round(epoch_f, 4)}
                            | means.pop()
                            | {"lr": self.scheduler.get_last_lr()[0]}
                            | logged
                        )
                    done = self.step >= self.total_steps
                    if (self.cfg.eval_every and self.step % self.cfg.eval_every == 0) or end_of_epoch or done:
                        self.evaluate()
                    if (self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0) or end_of_epoch:
                        self.save_checkpoint()
                    progress.update(task_id, completed=self.step, description=self._describe(logged))
                    if done or (stop_after is not None and self.step >= stop_after):
                        break
                if stop_after is not None and self.step >= stop_after:
                    return TrainResult(self.accelerator.unwrap_model(self.wrapped), self.history, self.best, self.step,
                                       removed=self.removed)  # fmt: skip
        self.train_s = time.perf_counter() - start
        self._restore_best()
        model = self.accelerator.unwrap_model(self.wrapped)
        if self._student_attn not in (None, "eager"):
            model.set_attn_implementation(self._student_attn)  # measure and save as it came
        return TrainResult(model, self.history, self.best, self.step, round(self.train_s, 2), self.removed)

    def _progress(self):
        progress = Progress(
            TextColumn(f"[bold]{self.stage}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            disable=not self.progress,
            transient=False,
            console=Console(stderr=True),  # stdout is for results (`--json`)
        )
        return progress, progress.add_task("", total=self.total_steps, completed=self.step)

    def _describe(self, logged: dict) -> str:
        parts = [f"loss {self._last_loss:.4f}"] if self._last_loss is not None else []
        last_train = next((r for r in reversed(self.history) if r.get("type") == "eval"), None)
        if last_train and self.task.main_metric in last_train:
            parts.append(f"{self.task.main_metric} {last_train[self.task.main_metric]:.4g}")
        if "sparsity" in logged:
            parts.append(f"sparsity {logged['sparsity']:.1%}")
        return "  ".join(parts)


def train(
    model: nn.Module,
    tokenizer,
    task,
    data,
    *,
    method: Method | None = None,
    config: TrainConfig | None = None,
    work_dir: str | Path,
    teacher: nn.Module | None = None,
    distill=None,
    resume: bool = False,
    progress: bool = True,
    stage: str = "train",
    on_trainer: Callable[[Trainer], Any] | None = None,
) -> TrainResult:
    """Fine-tune while `method` prunes; returns the best (or last) weights with the method still attached."""
    trainer = Trainer(
        model,
        tokenizer,
        task,
        data,
        method=method,
        config=config,
        work_dir=work_dir,
        teacher=teacher,
        distill=distill,
        progress=progress,
        stage=stage,
    )
    if on_trainer is not None:
        on_trainer(trainer)
    return trainer.fit(resume=resume)
