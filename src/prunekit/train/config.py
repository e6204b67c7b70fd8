"""Training settings: one pydantic model, so recipes validate them and manifests record them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=0)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps (quick runs, tests)
    batch_size: int = Field(32, ge=1)  # per process
    eval_batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    max_length: int = Field(128, ge=8)
    eval_every: int = Field(0, ge=0)  # optimizer steps between evaluations; 0 = at each epoch end
    eval_max_examples: int | None = Field(None, ge=1)  # cap the validation set during training (speed)
    checkpoint_every: int = Field(200, ge=0)  # optimizer steps between checkpoints; 0 = epoch ends only
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)
    select_best: bool = True  # keep the best validation checkpoint (once the method's target is reached)
    device: str | None = None  # default: what accelerate picks (cuda when available)
