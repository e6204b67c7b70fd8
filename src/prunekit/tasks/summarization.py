"""Summarization with a decoder-only model: a prompt template, loss on the summary only, greedy/beam ROUGE.

Training sequences are prompt + " " + target + EOS with the prompt masked out of the labels; when too long, the
source is cut (never the target), so the model always sees the "Summary:" cue. Evaluation generates from the same
prompt with left padding and scores the continuation alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from datasets import Dataset

from prunekit.core.errors import UsageError
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
    pad_id,
    pad_sequences,
)
from prunekit.tasks.lm import token_nll
from prunekit.tasks.metrics import rouge_metrics

if TYPE_CHECKING:
    import datasets

DEFAULT_TEMPLATE = "Summarize:\n{source}\nSummary:"


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a text with BOS (Llama) or not (GPT-2, SmolLM2): prompts follow suit."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


class SummarizationTask(Task):
    kind = "summarization"
    model_head = "causal-lm"
    main_metric = "rougeL"
    greater_is_better = True
    option_names = ("template", "num_beams", "max_new_tokens", "target_prefix")

    def __init__(
        self,
        *,
        template: str = DEFAULT_TEMPLATE,
        num_beams: int = 1,
        max_new_tokens: int = 48,
        target_prefix: str = " ",
    ) -> None:
        if template.count("{source}") != 1:
            raise UsageError(f"the summarization template must contain '{{source}}' exactly once, got {template!r}")
        if num_beams < 1 or max_new_tokens < 1:
            raise UsageError("num_beams and max_new_tokens must be at least 1")
        self.template = template
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.target_prefix = target_prefix  # what separates the prompt from the summary it is followed by

    def prompt_ids(self, tokenizer, source: str, budget: int, bos: bool) -> list[int]:
        """Token ids of the prompt, with the source's last tokens dropped until it fits `budget` (the template
        itself is never cut, so the result can exceed a budget smaller than the template)."""
        prefix, suffix = self.template.split("{source}")
        start = [tokenizer.bos_token_id] if bos else []
        if not getattr(tokenizer, "is_fast", False):  # no offsets: tokenise the three pieces separately
            head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            src = tokenizer(source, add_special_tokens=False)["input_ids"]
            tail = tokenizer(suffix, add_special_tokens=False)["input_ids"]
            keep = max(0, budget - len(start) - len(head) - len(tail))
            return start + head + src[:keep] + tail
        enc = tokenizer(prefix + source + suffix, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = enc["input_ids"]
        overflow = len(start) + len(ids) - budget
        if overflow > 0:
            a, b = len(prefix), len(prefix) + len(source)
            in_source = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if a <= s and e <= b and e > s]
            drop = set(in_source[max(0, len(in_source) - overflow) :])
            ids = [t for k, t in enumerate(ids) if k not in drop]
        return start + ids

    def example(self, tokenizer, source: str, target: str, max_length: int, bos: bool) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one training sequence of at most max_length tokens."""
        eos = eos_id(tokenizer)
        target_ids = tokenizer(self.target_prefix + target.strip(), add_special_tokens=False)["input_ids"]
        target_ids = target_ids + ([eos] if eos is not None else [])
        prompt = self.prompt_ids(tokenizer, source, max_length - len(target_ids), bos)
        room = max_length - len(prompt)
        if room < 1:
            raise UsageError(
                f"max_length {max_length} leaves no room for a summary after the prompt template: raise max_length"
            )
        target_ids = target_ids[:room]  # only when the target alone is longer than what the source can give up
        return prompt + target_ids, [IGNORE_INDEX] * len(prompt) + target_ids

    def features(self, split: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        check_columns(split, ("source", "target"), self.kind)
        bos = adds_bos(tokenizer)
        pairs = [
            self.example(tokenizer, s, t, max_length, bos)
            for s, t in zip(split["source"], split["target"], strict=True)
        ]
        return Dataset.from_dict(
            {
                "input_ids": [ids for ids, _ in pairs],
                "attention_mask": [[1] * len(ids) for ids, _ in pairs],
                "labels": [labels for _, labels in pairs],
            }
        )

    def generate(self, model, tokenizer, sources: list[str], *, max_length: int, device) -> list[str]:
        """Summaries of a batch of sources: left-padded prompts, greedy (or beam) decoding, continuation only."""
        bos = adds_bos(tokenizer)
        budget = max(1, max_length - self.max_new_tokens)
        prompts = [self.prompt_ids(tokenizer, s, budget, bos) for s in sources]
        pad = pad_id(tokenizer)
        input_ids = pad_sequences(prompts, pad, left=True).to(device)
        attention_mask = pad_sequences([[1] * len(p) for p in prompts], 0, left=True).to(device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos_id(tokenizer),
        )
        continuation = out[:, input_ids.shape[1] :]
        return [t.strip() for t in tokenizer.batch_decode(continuation, skip_special_tokens=True)]

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
        """ROUGE-1/2/L of generated summaries (best reference when `references` holds several) and the
        teacher-forced loss on the target tokens."""
        check_columns(split, ("source", "target"), self.kind)
        split = first_rows(split, max_examples)
        device = model_device(model, device)
        collate = PadCollator(pad_id(tokenizer))
        predictions: list[str] = []
        references: list[list[str]] = []
        total, count = 0.0, 0
        with eval_mode(model):
            features = self.features(split, tokenizer, max_length)
            for idx in chunks(len(features), batch_size):
                nll, n = token_nll(model, collate([features[i] for i in idx]), device)
                total += nll
                count += n
            for idx in chunks(len(split), batch_size):
                rows = split[idx.start : idx.stop]
                predictions.extend(
                    self.generate(model, tokenizer, rows["source"], max_length=max_length, device=device)
                )
                refs = rows.get("references") or [None] * len(idx)
                references.extend([list(r) if r else [t] for r, t in zip(refs, rows["target"], strict=True)])
        metrics = rouge_metrics(predictions, references)
        metrics["eval_loss"] = total / count if count else float("nan")
        return metrics
