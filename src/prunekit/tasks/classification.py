"""Single-text and text-pair classification: a sequence-classification head scored by accuracy, macro F1, MCC."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from datasets import Dataset

from prunekit.core.errors import UsageError
from prunekit.tasks.base import (
    PadCollator,
    Task,
    check_columns,
    chunks,
    eval_mode,
    first_rows,
    model_device,
    model_inputs,
    pad_id,
)
from prunekit.tasks.metrics import classification_metrics

if TYPE_CHECKING:
    import datasets


class ClassificationTask(Task):
    model_head = "sequence-classification"
    main_metric = "accuracy"
    greater_is_better = True

    def __init__(self, *, pair: bool = False) -> None:
        self.pair = pair
        self.kind = "pair-classification" if pair else "classification"

    @property
    def columns(self) -> tuple[str, ...]:
        return ("text", "text_pair", "label") if self.pair else ("text", "label")

    def num_labels(self, data: datasets.DatasetDict) -> int | None:
        """The ClassLabel's class count, else the largest label seen + 1."""
        first = next(iter(data.values()))
        feature = first.features.get("label")
        if getattr(feature, "num_classes", None):
            return int(feature.num_classes)
        labels = [int(x) for split in data.values() if len(split) for x in split["label"]]
        return max(labels) + 1 if labels else None

    def _encode(self, tokenizer, rows: dict[str, list], max_length: int, **kwargs) -> dict:
        args = (rows["text"], rows["text_pair"]) if self.pair else (rows["text"],)
        return tokenizer(*args, truncation=True, max_length=max_length, **kwargs)

    def features(self, split: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        check_columns(split, self.columns, self.kind)
        enc = self._encode(tokenizer, split.to_dict(), max_length)
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        cols = {n: enc[n] for n in names}
        cols["labels"] = [int(x) for x in split["label"]]
        return Dataset.from_dict(cols)

    @torch.no_grad()
    def evaluate(
        self,
        model,
        split: datasets.Dataset,
        tokenizer,
        *,
        batch_size: int = 32,
        max_length: int = 128,
        device=None,
        max_examples: int | None = None,
    ) -> dict[str, float]:
        check_columns(split, self.columns, self.kind)
        split = first_rows(split, max_examples)
        device = model_device(model, device)
        collate = PadCollator(pad_id(tokenizer))
        preds: list[int] = []
        labels: list[int] = []
        total_loss = 0.0
        with eval_mode(model):
            for idx in chunks(len(split), batch_size):
                rows = split[idx.start : idx.stop]
                enc = self._encode(tokenizer, rows, max_length)
                batch = collate([{k: enc[k][i] for k in enc} for i in range(len(idx))])
                logits = model(**model_inputs(model, batch, device)).logits.float()
                gold = torch.as_tensor(rows["label"], device=logits.device)
                if gold.numel() and int(gold.max()) >= logits.shape[-1]:
                    raise UsageError(
                        f"label {int(gold.max())} does not fit a model with {logits.shape[-1]} classes: "
                        "evaluate with data labelled like the model's training data"
                    )
                total_loss += F.cross_entropy(logits, gold, reduction="sum").item()
                preds.extend(logits.argmax(-1).tolist())
                labels.extend(gold.tolist())
        metrics = classification_metrics(preds, labels)
        metrics["eval_loss"] = total_loss / len(labels) if labels else float("nan")
        return metrics
