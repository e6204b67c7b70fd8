"""Extractive question answering (SQuAD style): sliding windows over long contexts, span post-processing, EM/F1.

Each example becomes one or more windows of `max_length` tokens (question + a slice of the context overlapping the
previous slice by `doc_stride` tokens). Training labels a window with the answer's token span, or with the CLS
index when the answer is not wholly inside it. Evaluation picks, over all windows of an example, the best-scoring
span start <= end inside the context, at most `max_answer_length` tokens, among the `n_best` top starts and ends,
and maps it back to characters of the context through the offset mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
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
    require_fast,
)
from prunekit.tasks.metrics import squad_metrics

if TYPE_CHECKING:
    import datasets

_COLUMNS = ("question", "context", "answers")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

Offsets = Sequence[tuple[int, int] | None]


def _fit_questions(tokenizer, questions: Sequence[str], max_length: int, stride: int) -> list[str]:
    """Questions cut (rarely) so that every window keeps more context tokens than the stride, as the tokenizer
    requires; the tokenizer would otherwise abort on the one overlong question of a large dataset."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride - 1  # most question tokens
    if room < 1:
        raise UsageError(
            f"max_length {max_length} leaves no room for question and context with doc_stride {stride}: "
            "use a larger max_length or a smaller doc_stride"
        )
    stripped = [q.lstrip() for q in questions]
    enc = tokenizer(stripped, add_special_tokens=False, return_offsets_mapping=True)
    return [
        q if len(offs) <= room else q[: offs[room - 1][1]]
        for q, offs in zip(stripped, enc["offset_mapping"], strict=True)
    ]


def encode_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int, stride: int):
    """Question/context windows with offsets and overflow_to_sample_mapping (only the context is truncated)."""
    require_fast(tokenizer, "extractive-qa")
    return tokenizer(
        _fit_questions(tokenizer, questions, max_length, stride),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def _cls_index(input_ids: Sequence[int], cls_token_id: int | None) -> int:
    if cls_token_id is not None and cls_token_id in input_ids:
        return list(input_ids).index(cls_token_id)
    return 0


def answer_positions(enc, answers: Sequence[dict], cls_token_id: int | None) -> tuple[list[int], list[int]]:
    """Start/end token index of each window's answer (the first gold answer), or the CLS index when it is not
    wholly inside the window's context."""
    starts: list[int] = []
    ends: list[int] = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        cls = _cls_index(enc["input_ids"][i], cls_token_id)
        answer = answers[enc["overflow_to_sample_mapping"][i]]
        context_tokens = [k for k, s in enumerate(enc.sequence_ids(i)) if s == 1]
        if not answer["text"] or not context_tokens:
            starts.append(cls)
            ends.append(cls)
            continue
        start_char = int(answer["answer_start"][0])
        end_char = start_char + len(answer["text"][0])
        first, last = context_tokens[0], context_tokens[-1]
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            starts.append(cls)
            ends.append(cls)
            continue
        s = first
        while s <= last and offsets[s][0] <= start_char:
            s += 1
        e = last
        while e >= first and offsets[e][1] >= end_char:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    return starts, ends


def context_offsets(enc, i: int) -> list[tuple[int, int] | None]:
    """Window i's character offsets, None for tokens outside the context (question, special tokens)."""
    seq = enc.sequence_ids(i)
    return [tuple(o) if seq[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][i])]


def best_span(
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    offsets: Sequence[Offsets],
    context: str,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> str:
    """The answer text of one example from its windows' logits: the highest start + end logit over valid spans."""
    best_score = -np.inf
    best = ""
    for s_logits, e_logits, offs in zip(start_logits, end_logits, offsets, strict=True):
        s_logits = np.asarray(s_logits)
        e_logits = np.asarray(e_logits)
        top_starts = np.argsort(s_logits)[::-1][:n_best]
        top_ends = np.argsort(e_logits)[::-1][:n_best]
        for s in top_starts:
            if s >= len(offs) or offs[s] is None:
                continue
            for e in top_ends:
                if e >= len(offs) or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = s_logits[s] + e_logits[e]
                if score > best_score:
                    best_score = score
                    best = context[offs[s][0] : offs[e][1]]
    return best


class ExtractiveQATask(Task):
    kind = "extractive-qa"
    model_head = "question-answering"
    main_metric = "f1"
    greater_is_better = True
    option_names = ("doc_stride", "max_answer_length", "n_best")

    def __init__(self, *, doc_stride: int = 32, max_answer_length: int = 30, n_best: int = 20) -> None:
        if doc_stride < 0 or max_answer_length < 1 or n_best < 1:
            raise UsageError("doc_stride must be >= 0, max_answer_length and n_best >= 1")
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length
        self.n_best = n_best

    def features(self, split: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        check_columns(split, _COLUMNS, self.kind)
        enc = encode_windows(tokenizer, split["question"], split["context"], max_length, self.doc_stride)
        starts, ends = answer_positions(enc, split["answers"], tokenizer.cls_token_id)
        cols = {n: enc[n] for n in _MODEL_INPUTS if n in enc}
        cols["start_positions"] = starts
        cols["end_positions"] = ends
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
        check_columns(split, _COLUMNS, self.kind)
        split = first_rows(split, max_examples)
        device = model_device(model, device)
        collate = PadCollator(pad_id(tokenizer))
        predictions: list[str] = []
        golds: list[list[str]] = []
        loss_sum, windows = 0.0, 0
        with eval_mode(model):
            for idx in chunks(len(split), batch_size):
                rows = split[idx.start : idx.stop]
                enc = encode_windows(tokenizer, rows["question"], rows["context"], max_length, self.doc_stride)
                starts, ends = answer_positions(enc, rows["answers"], tokenizer.cls_token_id)
                n = len(enc["input_ids"])
                s_out: list[np.ndarray] = []
                e_out: list[np.ndarray] = []
                for w in chunks(n, batch_size):
                    batch = collate([{k: enc[k][i] for k in _MODEL_INPUTS if k in enc} for i in w])
                    out = model(**model_inputs(model, batch, device))
                    s_log, e_log = out.start_logits.float(), out.end_logits.float()
                    s_pos = torch.as_tensor(starts[w.start : w.stop], device=s_log.device)
                    e_pos = torch.as_tensor(ends[w.start : w.stop], device=s_log.device)
                    loss_sum += (
                        F.cross_entropy(s_log, s_pos, reduction="sum").item()
                        + F.cross_entropy(e_log, e_pos, reduction="sum").item()
                    ) / 2
                    windows += len(w)
                    lengths = batch["attention_mask"].sum(-1).tolist()
                    s_out.extend(s_log[j, : lengths[j]].cpu().numpy() for j in range(len(w)))
                    e_out.extend(e_log[j, : lengths[j]].cpu().numpy() for j in range(len(w)))
                by_example: dict[int, list[int]] = {}
                for i, ex in enumerate(enc["overflow_to_sample_mapping"]):
                    by_example.setdefault(ex, []).append(i)
                for ex in range(len(idx)):
                    wins = by_example.get(ex, [])
                    predictions.append(
                        best_span(
                            [s_out[i] for i in wins],
                            [e_out[i] for i in wins],
                            [context_offsets(enc, i) for i in wins],
                            rows["context"][ex],
                            n_best=self.n_best,
                            max_answer_length=self.max_answer_length,
                        )
                    )
                    golds.append(list(rows["answers"][ex]["text"]))
        metrics = squad_metrics(predictions, golds)
        metrics["eval_loss"] = loss_sum / windows if windows else float("nan")
        return metrics
