"""Guards against data and settings that would run to exit code 0 with meaningless numbers.

Thresholds (each refusal is one UsageError line naming the file, the numbers and the fix):

- every split a run uses has at least MIN_SPLIT_ROWS (1) row: the training split always; the validation and
  test splits whenever they are asked for (data.validation_fraction / data.test_fraction above 0, or a split the
  data brings itself). A fraction of 0 asks for no split, so an empty split is fine then;
- classification (and pair-classification) training data has at least MIN_CLASSES (2) distinct labels: with one
  class every prediction is right and accuracy says 1.0;
- evaluation data (`prunekit evaluate --data FILE`) has at least MIN_SPLIT_ROWS (1) row, or its metrics are NaN;
- a max_length is at most the positions the model has (topology.max_positions), less padding_idx + 1 for the
  RoBERTa-style families that number positions from padding_idx + 1 (topology.position_offset).
  Models without such a field (relative or rotary positions without a recorded limit) are not checked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from prunekit.core.errors import UsageError
from prunekit.topology import max_positions, position_offset

MIN_SPLIT_ROWS = 1
MIN_CLASSES = 2
EVAL_SPLITS = ("validation", "test")


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def rows_needed(fraction: float) -> int:
    """The fewest rows n for which round(n * fraction) (how splits are sized) is at least MIN_SPLIT_ROWS."""
    n = max(1, math.floor((MIN_SPLIT_ROWS - 0.5) / fraction))
    while round(n * fraction) < MIN_SPLIT_ROWS:
        n += 1
    return n


def check_split_sizes(
    sizes: Mapping[str, int],
    *,
    rows: int,
    fractions: Mapping[str, float],
    carved: Sequence[str],
    where: str,
) -> None:
    """Refuse an empty split the run uses.

    `sizes`: rows per split after splitting; `rows`: the rows the splits were carved from (the file, or its train
    split); `fractions`: data.validation_fraction / data.test_fraction; `carved`: the evaluation splits cut out of
    those rows (the others the data brought itself).
    """
    for split in EVAL_SPLITS:
        if split not in carved and split in sizes and sizes[split] < MIN_SPLIT_ROWS:
            raise UsageError(f"{where}: its '{split}' split has no rows: add rows to it or leave the split out")
    empty = [s for s in EVAL_SPLITS if s in carved and fractions.get(s, 0) > 0 and sizes.get(s, 0) < MIN_SPLIT_ROWS]
    if empty:
        given = " and ".join(f"data.{s}_fraction {fractions[s]:g}" for s in empty)
        got = " and ".join(f"0 {s}" for s in empty)
        need = max(rows_needed(fractions[s]) for s in empty)
        raise UsageError(
            f"{where} has {_rows(rows)}: {given} {'give' if len(empty) > 1 else 'gives'} {got} rows; give at least "
            f"{need:,} rows, or other data.validation_fraction / data.test_fraction (0 runs without that split)"
        )
    if sizes.get("train", 0) < MIN_SPLIT_ROWS:
        if rows < MIN_SPLIT_ROWS:
            raise UsageError(f"{where}: its 'train' split has no rows: add rows to train on")
        taken = " and ".join(f"{sizes.get(s, 0):,} {s}" for s in EVAL_SPLITS if s in carved)
        raise UsageError(
            f"{where} has {_rows(rows)} and all of them went to {taken}, none is left to train on: give more rows, "
            "or lower data.validation_fraction / data.test_fraction"
        )


def check_classes(labels: Sequence[int], names: Sequence[str], *, where: str, all_labels: Sequence[int] = ()) -> None:
    """Refuse classification training labels with fewer than MIN_CLASSES distinct classes."""
    counts = Counter(labels)
    if len(counts) >= MIN_CLASSES:
        return

    def name(k: int) -> str:
        return repr(names[k]) if 0 <= k < len(names) else repr(k)

    if not counts:
        return  # no rows: check_split_sizes says so
    ((only, n),) = counts.items()
    others = sorted(set(all_labels) - {only})
    if others:
        raise UsageError(
            f"{where}: the training split's {_rows(n)} all have label {name(only)} (the other classes, "
            f"{', '.join(name(k) for k in others)}, went to validation/test): a classifier needs at least "
            f"{MIN_CLASSES} classes to train on; add rows of those classes, or lower data.validation_fraction / "
            "data.test_fraction"
        )
    total = len(all_labels) or n
    raise UsageError(
        f"{where}: all {_rows(total)} have label {name(only)}: a classifier needs at least {MIN_CLASSES} classes to "
        "train on (with one, every prediction is right); add rows of other classes"
    )


def check_eval_rows(n: int, where: str) -> None:
    """Refuse evaluation data without rows (its metrics would be NaN)."""
    if n < MIN_SPLIT_ROWS:
        raise UsageError(f"{where} has no rows to evaluate on (only a header, or empty): give a file with rows")


# --- model limits ----------------------------------------------------------------------------------------------


def position_limit(model_config: Any) -> int | None:
    """The longest sequence (tokens) the model's position embeddings cover, or None when it records none."""
    limit = max_positions(model_config)
    if limit is None:
        return None
    offset = position_offset(model_config)  # position ids from padding_idx + 1 (RoBERTa-style numbering)
    return limit - offset if limit - offset > 0 else limit


def check_max_length(model_config: Any, max_length: int, *, key: str = "train.max_length") -> None:
    """Refuse a max_length above the model's position limit (see `position_limit`); silent when it has none."""
    limit = position_limit(model_config)
    if limit is None or max_length <= limit:
        return
    kind = getattr(model_config, "model_type", None) or "this model"
    raise UsageError(
        f"{key} {max_length:,} is more than the model takes: {kind} models have position embeddings for "
        f"{limit:,} tokens; set {key} to {limit:,} or less (e.g. --set {key}={min(limit, 512)})"
    )
