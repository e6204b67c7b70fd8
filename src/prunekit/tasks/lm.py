"""Causal language modelling: documents joined with EOS and cut into blocks ("group texts"), scored by perplexity."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from datasets import Dataset

from prunekit.tasks.base import (
    IGNORE_INDEX,
    PadCollator,
    Task,
    check_columns,
    chunks,
    eos_id,
    eval_mode,
    first_rows,
    model_device,
    model_inputs,
    pad_id,
)
from prunekit.tasks.metrics import perplexity

if TYPE_CHECKING:
    import datasets


def token_nll(model, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[float, int]:
    """(summed next-token NLL, number of predicted tokens) of a padded batch; labels -100 are skipped.

    Row by row, so that a large vocabulary never needs a second (batch, length, vocab) copy for log-softmax.
    """
    logits = model(**model_inputs(model, batch, device)).logits
    labels = batch["labels"].to(logits.device)
    total, count = 0.0, 0
    for row in range(logits.shape[0]):
        target = labels[row, 1:]
        keep = target != IGNORE_INDEX
        n = int(keep.sum())
        if n == 0:
            continue
        total += F.cross_entropy(logits[row, :-1][keep].float(), target[keep], reduction="sum").item()
        count += n
    return total, count


def group_texts(token_lists: list[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate token lists and cut into blocks of `block_size`; the last, shorter block is kept if it holds at
    least two tokens (one prediction), so that small evaluation sets lose nothing."""
    stream = [t for ids in token_lists for t in ids]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    if blocks and len(blocks[-1]) < 2:
        blocks.pop()
    return blocks


class CausalLMTask(Task):
    kind = "causal-lm"
    model_head = "causal-lm"
    main_metric = "perplexity"
    greater_is_better = False

    def __init__(self) -> None:
        pass

    def blocks(self, texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
        eos = eos_id(tokenizer)
        ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return group_texts([x + [eos] if eos is not None else x for x in ids], max_length)

    def features(self, split: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        check_columns(split, ("text",), self.kind)
        blocks = self.blocks(split["text"], tokenizer, max_length)
        return Dataset.from_dict(
            {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": blocks}
        )

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
        """Perplexity over every token of the first `max_examples` documents, in blocks of `max_length`."""
        check_columns(split, ("text",), self.kind)
        split = first_rows(split, max_examples)
        device = model_device(model, device)
        blocks = self.blocks(split["text"], tokenizer, max_length)
        collate = PadCollator(pad_id(tokenizer))
        total, count = 0.0, 0
        with eval_mode(model):
            for idx in chunks(len(blocks), batch_size):
                batch = collate(
                    [
                        {"input_ids": b, "attention_mask": [1] * len(b), "labels": b}
                        for b in blocks[idx.start : idx.stop]
                    ]
                )
                nll, n = token_nll(model, batch, device)
                total += nll
                count += n
        loss = total / count if count else float("nan")
        return {"perplexity": perplexity(total, count), "eval_loss": loss, "eval_tokens": float(count)}
