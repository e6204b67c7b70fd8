"""What every task shares: the Task interface, dynamic-padding collation and the small model-calling helpers."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from prunekit.core.errors import UsageError

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100  # label value that cross-entropy skips: padding, prompts


class Task(ABC):
    """One kind of NLP task: how its data becomes training features, how a batch is padded, how a model is scored.

    Subclasses take their options as keyword arguments (see `get_task`); `options` returns them for run manifests.
    """

    kind: str
    model_head: str  # what prunekit.catalog.models.load_model(task=...) needs
    main_metric: str
    greater_is_better: bool = True
    option_names: ClassVar[tuple[str, ...]] = ()

    @property
    def options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.option_names}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

    def num_labels(self, data: datasets.DatasetDict) -> int | None:
        """How many classes the model head needs (None: the head has no label count)."""
        return None

    @abstractmethod
    def features(self, split: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """Tokenised training features of a canonical split (plain lists: `collator` pads and makes tensors)."""

    def collator(self, tokenizer) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return PadCollator(pad_id(tokenizer))

    @abstractmethod
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
        """Metrics of `model` on a canonical split (the first `max_examples` rows), incl. `main_metric`."""


class PadCollator:
    """Pads a list of feature dicts to the longest in the batch, on the right.

    input_ids take the tokenizer's pad id, sequence labels -100 (ignored by the loss), anything else 0;
    scalar fields (class labels, start/end positions) are stacked.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def _pad_value(self, key: str) -> int:
        if key == "input_ids":
            return self.pad_token_id
        if key == "labels":
            return IGNORE_INDEX
        return 0

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        batch: dict[str, torch.Tensor] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            first = values[0]
            if isinstance(first, str | bytes | dict) or first is None:
                continue  # metadata (ids, texts) is not a model input
            if isinstance(first, torch.Tensor) and first.dim() == 0 or isinstance(first, int | float):
                batch[key] = torch.tensor([v.item() if isinstance(v, torch.Tensor) else v for v in values])
                continue
            batch[key] = pad_sequences(values, self._pad_value(key))
        return batch


def pad_sequences(values: Sequence[Sequence[int]], pad_value: int, *, left: bool = False) -> torch.Tensor:
    """A (batch, longest) long tensor of variable-length id lists, padded on the right (or left)."""
    longest = max(len(v) for v in values)
    out = torch.full((len(values), longest), pad_value, dtype=torch.long)
    for i, v in enumerate(values):
        if len(v):
            row = torch.as_tensor(v, dtype=torch.long)
            if left:
                out[i, longest - len(v) :] = row
            else:
                out[i, : len(v)] = row
    return out


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (decoders often have no pad token), else 0."""
    for value in (tokenizer.pad_token_id, getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def eos_id(tokenizer) -> int | None:
    """The id that ends a document: EOS, else SEP (encoder tokenizers), else none."""
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None)):
        if value is not None:
            return int(value)
    return None


def require_fast(tokenizer, kind: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            f"task '{kind}' needs a fast (Rust) tokenizer for offset mappings, got {type(tokenizer).__name__}"
        )


def model_device(model, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def accepts(model, argument: str) -> bool:
    """Whether model.forward names `argument` (DistilBERT-like models reject token_type_ids)."""
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True


def model_inputs(model, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / token_type_ids of a batch, on the device, minus what the model does not take."""
    keys = ["input_ids", "attention_mask"]
    if "token_type_ids" in batch and accepts(model, "token_type_ids"):
        keys.append("token_type_ids")
    return {k: batch[k].to(device) for k in keys if k in batch}


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """model.eval() for the duration, then back to the mode it was in (a trainer may evaluate mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def first_rows(split: datasets.Dataset, max_examples: int | None) -> datasets.Dataset:
    """The first `max_examples` rows: splits are already shuffled, so this is a fixed, seeded sample."""
    if max_examples is not None and max_examples < len(split):
        return split.select(range(max_examples))
    return split


def calibration_batches(task, split: datasets.Dataset, tokenizer, max_length: int, batch_size: int, n: int):
    """A function giving the first `n` sequences of `split` (a seeded sample: splits are shuffled) as collated
    batches with labels, for importance scores and calibration; each call starts over. A sequence is a feature: a
    language-model split is read until it fills `n` blocks of `max_length` tokens (an article gives many, a line of
    verse a fraction of one), a QA context may give several windows."""
    rows = n
    while True:
        feats = task.features(first_rows(split, rows), tokenizer, max_length)
        if len(feats) >= n or rows >= len(split):
            break
        rows = min(len(split), max(rows * 2, rows * n // max(1, len(feats)) + 1))
    feats = first_rows(feats, n)
    collate = task.collator(tokenizer)
    return lambda: (
        collate([feats[j] for j in range(i, min(i + batch_size, len(feats)))]) for i in range(0, len(feats), batch_size)
    )


def chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, max(1, size)):
        yield range(start, min(n, start + size))


def check_columns(split: datasets.Dataset, needed: Sequence[str], kind: str) -> None:
    missing = [c for c in needed if c not in split.column_names]
    if missing:
        raise UsageError(
            f"task '{kind}' needs column(s) {', '.join(missing)}; the data has {', '.join(split.column_names)}"
        )
