"""Users' own data: CSV/TSV/JSONL/JSON/Parquet files or save_to_disk folders, mapped onto the canonical columns.

Canonical columns are those of the named datasets (prunekit.catalog.datasets), so every task works the same on
both: classification text,label; pair-classification text,text_pair,label; extractive-qa id,title,context,question,
answers; summarization source,target,references; causal-lm text. A file without splits is split like a named
dataset (seeded, stratified by label, QA grouped by context) so that the split is reproducible from the seed.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from datasets import Dataset, DatasetDict

from prunekit.catalog import datasets as catalog
from prunekit.core.errors import UsageError
from prunekit.tasks.checks import check_classes, check_eval_rows, check_split_sizes
from prunekit.tasks.files import SPLIT_NAMES, Columns, read_parts

if TYPE_CHECKING:
    import datasets

TASK_KINDS = catalog.TASKS
REQUIRED: dict[str, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "pair-classification": ("text", "text_pair", "label"),
    "extractive-qa": ("question", "context", "answers"),
    "summarization": ("source", "target"),
    "causal-lm": ("text",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {"extractive-qa": ("id", "title"), "summarization": ("references",)}


# --- canonical columns -----------------------------------------------------------------------------------------


def _user_name(canonical: str, columns: Mapping[str, str]) -> str:
    return columns.get(canonical, canonical)


def infer_task(available: set[str]) -> str | None:
    """The task whose required canonical columns are present (the most specific first)."""
    for task in ("extractive-qa", "summarization", "pair-classification", "classification", "causal-lm"):
        if set(REQUIRED[task]) <= available:
            return task
    return None


CANONICAL = ("text", "text_pair", "label", "question", "context", "answers", "id", "title", "source", "target",
             "references")  # fmt: skip


def _resolve_task(task: str | None, existing: list[str], columns: Mapping[str, str], where: str) -> str:
    for canonical, user in columns.items():
        if canonical not in CANONICAL:
            raise UsageError(
                f"cannot map '{user}' onto '{canonical}': the canonical columns are {', '.join(CANONICAL)}"
            )
        if user not in existing:
            raise UsageError(
                f"{where}: no column '{user}' (mapped to '{canonical}'); its columns are {', '.join(existing)}"
            )
    if task is None:
        canonicals = {c for cols in REQUIRED.values() for c in cols}
        task = infer_task({c for c in canonicals if _user_name(c, columns) in existing})
        if task is None:
            wanted = "; ".join(f"{t}: {', '.join(c)}" for t, c in REQUIRED.items())
            raise UsageError(
                f"{where}: cannot tell the task from its columns ({', '.join(existing)}); name the task, and map "
                f"columns onto {wanted}"
            )
    elif task not in TASK_KINDS:
        raise UsageError(f"unknown task '{task}': use one of {', '.join(TASK_KINDS)}")
    for c in REQUIRED[task]:
        user = _user_name(c, columns)
        if user not in existing:
            raise UsageError(
                f"{where}: task '{task}' needs a '{c}' column but there is no column '{user}'; its columns are "
                f"{', '.join(existing)} (map one: in a recipe data.columns: {{{c}: NAME}}, on the command line "
                f"--column {c}=NAME)"
            )
    return task


def _text(values: list, column: str, where: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if v is None:
            raise UsageError(f"{where}: row {i + 1} has no value in column '{column}'")
        out.append(v if isinstance(v, str) else str(v))
    return out


def _int_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


def _missing(value: Any, *, blank: bool) -> bool:
    """No value: None or NaN; with `blank` also an empty or blank string (a CSV's empty cell)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return blank and isinstance(value, str) and not value.strip()


DROP_FIX = "fix them or set data.drop_invalid: true to drop them (--set data.drop_invalid=true)"


def label_ids(values: list, names: Sequence[str] | None, where: str) -> tuple[list[int], list[str]]:
    """Labels as class ids plus the class names.

    With `names` (a ClassLabel, or a model's classes) names map to their index and ids pass through; otherwise
    integer labels are kept as ids (names "0".."max") and string labels become ids of their sorted unique names.
    """
    missing = [i for i, v in enumerate(values) if _missing(v, blank=True)]
    if missing:
        raise UsageError(
            f"{where}: {len(missing):,} of {len(values):,} rows have no label (first: row {missing[0] + 1}): {DROP_FIX}"
        )
    if names:
        names = list(names)
        index = {n: k for k, n in enumerate(names)}
        ids = []
        for v in values:
            if str(v) in index:
                ids.append(index[str(v)])
            elif _int_like(v) and 0 <= int(float(v)) < len(names):
                ids.append(int(float(v)))
            else:
                raise UsageError(f"{where}: label {v!r} is not one of the classes {', '.join(names)}")
        return ids, names
    if all(_int_like(v) for v in values):
        ids = [int(float(v)) for v in values]
        if ids and min(ids) < 0:
            raise UsageError(f"{where}: integer labels must be >= 0, found {min(ids)}")
        return ids, [str(k) for k in range(max(ids, default=-1) + 1)]
    names = sorted({str(v) for v in values})
    index = {n: k for k, n in enumerate(names)}
    return [index[str(v)] for v in values], names


def _answers(value: Any, context: str, where: str, row: int) -> dict[str, list]:
    """One example's answers as {text: [...], answer_start: [...]} from the usual spellings: that dict, a list of
    {text, answer_start} records, its JSON, or a bare answer string (located in the context)."""
    if isinstance(value, str):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value) if value.strip()[:1] in ("{", "[") else value
    if isinstance(value, str):
        value = [{"text": value, "answer_start": context.find(value)}]
    if isinstance(value, Mapping):
        texts, starts = value.get("text", []), value.get("answer_start", [])
        texts = [texts] if isinstance(texts, str) else list(texts)
        starts = [starts] if isinstance(starts, int) else list(starts)
        starts = starts + [-1] * (len(texts) - len(starts))  # a missing start is looked up in the context
        value = [{"text": t, "answer_start": s} for t, s in zip(texts, starts[: len(texts)], strict=True)]
    if not isinstance(value, list):
        raise UsageError(f"{where}: row {row + 1}: answers must be {{text: [...], answer_start: [...]}}, got {value!r}")
    records = []
    for a in value:
        a = a if isinstance(a, Mapping) else {"text": str(a)}
        start = a.get("answer_start")
        if start is None or int(start) < 0:
            start = context.find(a["text"])
        records.append({"text": str(a["text"]), "answer_start": int(start)})
    # a start that does not index its text moves to the nearest occurrence; an answer not in the context is dropped
    return catalog._aligned_answers(context, [r for r in records if r["answer_start"] >= 0])


def canonical_columns(raw: Columns, task: str, columns: Mapping[str, str], where: str) -> Columns:
    """The task's canonical columns from a user table (labels left raw: they are mapped over all splits at once)."""
    n = len(next(iter(raw.values()))) if raw else 0
    get = {
        c: raw[_user_name(c, columns)] for c in REQUIRED[task] + OPTIONAL.get(task, ()) if _user_name(c, columns) in raw
    }
    out: Columns = {}
    for c in ("text", "text_pair", "question", "context", "source", "target"):
        if c in REQUIRED[task]:
            out[c] = _text(get[c], _user_name(c, columns), where)
    if "label" in REQUIRED[task]:
        out["label"] = list(get["label"])
    if task == "extractive-qa":
        out["id"] = _text(get["id"], "id", where) if "id" in get else [str(i) for i in range(n)]
        out["title"] = [str(t or "") for t in get["title"]] if "title" in get else [""] * n
        out["answers"] = [
            _answers(a, c, where, i) for i, (a, c) in enumerate(zip(get["answers"], out["context"], strict=True))
        ]
    if task == "summarization":
        refs = get.get("references") or [None] * n
        out["references"] = [
            [r] if isinstance(r, str) and r else [str(x) for x in r] if r else [t]
            for r, t in zip(refs, out["target"], strict=True)
        ]
    return out


def _features(task: str, label_names: Sequence[str]) -> datasets.Features:
    # the named datasets' own schema, so user data and catalog data are interchangeable
    return catalog._features(SimpleNamespace(task=task, label_names=tuple(label_names)))


def _dataset(
    cols: Columns, indices: Sequence[int] | None, *, features: datasets.Features, split: str | None = None
) -> datasets.Dataset:
    if indices is None:
        return Dataset.from_dict({c: cols[c] for c in features}, features=features, split=split)
    return Dataset.from_dict({c: [cols[c][i] for i in indices] for c in features}, features=features, split=split)


# --- splitting -------------------------------------------------------------------------------------------------


def _group_take(idx: list[int], k: int, groups: list[str], seed: int) -> tuple[list[int], list[int]]:
    """(rest, about k picks) with whole groups picked, so no QA context is in two splits."""
    # lazy: scikit-learn takes ~1.5 s to import, used once per split / evaluation
    from sklearn.model_selection import GroupShuffleSplit

    if k <= 0:
        return idx, []
    if k >= len(idx) or len({groups[i] for i in idx}) < 2:
        return catalog._take(idx, k, None, seed)
    splitter = GroupShuffleSplit(n_splits=1, test_size=k / len(idx), random_state=seed)
    rest, taken = next(splitter.split(idx, groups=[groups[i] for i in idx]))
    return [idx[j] for j in rest], [idx[j] for j in taken]


def split_indices(
    n: int,
    *,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
    labels: list[int] | None = None,
    groups: list[str] | None = None,
    only: Sequence[str] = catalog.SPLITS,
) -> dict[str, list[int]]:
    """Seeded train/validation/test indices as the named datasets make them: test first, then validation from the
    rest (sizes are fractions of all n); stratified by label, or grouped (QA contexts). `only` limits which of
    validation/test are carved out (a DatasetDict may already have the others)."""

    def take(idx: list[int], k: int) -> tuple[list[int], list[int]]:
        return _group_take(idx, k, groups, seed) if groups is not None else catalog._take(idx, k, labels, seed)

    rest, test = take(list(range(n)), round(n * test_fraction) if "test" in only else 0)
    train, val = take(rest, round(n * validation_fraction) if "validation" in only else 0)
    return {"train": train, "validation": val, "test": test}


# --- public ----------------------------------------------------------------------------------------------------


def invalid_rows(raw: Columns, task: str, columns: Mapping[str, str]) -> dict[str, list[int]]:
    """What is missing -> the rows (0-based) that miss it: the label (None, NaN, blank) and the task's texts (None,
    NaN; blank too except for causal-lm, whose corpora hold empty lines, e.g. wikitext's paragraph breaks)."""
    out: dict[str, list[int]] = {}
    for c in sorted(REQUIRED[task], key=lambda c: c != "label"):  # the label first
        name = _user_name(c, columns)
        if c == "answers" or name not in raw:
            continue
        label = c == "label"
        rows = [i for i, v in enumerate(raw[name]) if _missing(v, blank=label or task != "causal-lm")]
        if rows:
            what = ("label" if name == "label" else f"label (column '{name}')") if label else f"text in column '{name}'"
            out[what] = rows
    return out


def _drop_invalid(
    parts: dict[str | None, Columns], task: str, columns: Mapping[str, str], where: str, drop: bool, fix: str
) -> tuple[dict[str | None, Columns], int]:
    """The parts without rows that miss a label or text, and how many were dropped; without `drop` such rows are
    an error that counts them: "FILE: 1,830 of 40,000 rows have no label (first: row 113): FIX"."""
    found = {split: invalid_rows(raw, task, columns) for split, raw in parts.items()}
    if not any(found.values()):
        return parts, 0
    total = sum(len(next(iter(raw.values()), [])) for raw in parts.values())
    bad = {split: sorted({i for rows in f.values() for i in rows}) for split, f in found.items()}
    dropped = sum(len(rows) for rows in bad.values())
    what: dict[str, tuple[int, str]] = {}  # missing -> (count, first row)
    for split, f in found.items():
        for miss, rows in f.items():
            row = f"row {rows[0] + 1}" if split is None else f"[{split}] row {rows[0] + 1}"
            count, first = what.get(miss, (0, row))
            what[miss] = (count + len(rows), first)
    said = " and ".join(
        f"{count:,}{f' of {total:,} rows' if k == 0 else ''} {'have' if k == 0 or count != 1 else 'has'} no {miss} "
        f"(first: {first})"
        for k, (miss, (count, first)) in enumerate(what.items())
    )
    if not drop:
        raise UsageError(f"{where}: {said}: {fix}")
    if dropped == total:
        raise UsageError(f"{where}: {said}, so data.drop_invalid leaves no rows: fix the file")
    kept = {}
    for split, raw in parts.items():
        drop_rows = set(bad[split])
        kept[split] = {c: [v for i, v in enumerate(vals) if i not in drop_rows] for c, vals in raw.items()}
    return kept, dropped


def _canonical_parts(
    path: str | Path,
    task: str | None,
    columns: Mapping[str, str] | None,
    label_names: Sequence[str] | None,
    *,
    drop_invalid: bool = False,
    fix: str = DROP_FIX,
) -> tuple[dict[str | None, Columns], str, list[str], int]:
    """(canonical columns by split, task, class names, rows dropped) of a user file; labels mapped consistently
    over all splits. Rows without a label or text are an error unless `drop_invalid` (then they are dropped)."""
    parts, declared = read_parts(path)
    columns = dict(columns or {})
    where = str(path)
    for split, raw in parts.items():
        if not raw:  # no records, so no columns either: a JSON [] or an empty split
            raise UsageError(
                f"{where} has no rows"
                if split is None
                else f"{where}: its '{split}' split has no rows: add rows to it or leave the split out"
            )
    first = next(iter(parts.values()), {})
    task = _resolve_task(task, list(first), columns, where)
    for split, raw in parts.items():
        _resolve_task(task, list(raw), columns, where if split is None else f"{where} [{split}]")
    parts, dropped = _drop_invalid(parts, task, columns, where, drop_invalid, fix)
    out: dict[str | None, Columns] = {}
    for split, raw in parts.items():
        sub = where if split is None else f"{where} [{split}]"
        out[split] = canonical_columns(raw, task, columns, sub)
    names: list[str] = []
    if "label" in REQUIRED[task]:
        label_col = _user_name("label", columns)
        all_labels = [v for cols in out.values() for v in cols["label"]]
        ids, names = label_ids(all_labels, label_names or declared.get(label_col), where)
        start = 0
        for cols in out.values():
            cols["label"] = ids[start : start + len(cols["label"])]
            start += len(cols["label"])
    return out, task, names, dropped


def dropped_rows(data: Any) -> int:
    """How many rows `load_data(..., drop_invalid=True)` dropped from a user file (0: none, or a named dataset):
    for the run manifest's split record."""
    return int(getattr(data, "dropped_rows", 0) or 0)


def load_user_data(
    path: str | Path,
    *,
    task: str | None = None,
    columns: Mapping[str, str] | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_examples: int | None = None,
    drop_invalid: bool = False,
) -> tuple[datasets.DatasetDict, str]:
    """A user file/folder as canonical train/validation/test splits, and its task (see `load_data`).

    Refused (prunekit.tasks.checks): rows without a label or text unless `drop_invalid`, an empty split the run
    uses, and classification training data with fewer than 2 classes.
    """
    catalog._check_args(seed, validation_fraction, test_fraction, max_examples)
    parts, task, names, dropped = _canonical_parts(path, task, columns, None, drop_invalid=drop_invalid)
    features = _features(task, names)
    key = REQUIRED[task][0]
    if not any(len(cols[key]) for cols in parts.values()):
        raise UsageError(f"{path} has no rows")
    if set(parts) == {None}:
        named: dict[str, Columns] = {}
        source = parts[None]
        missing = ["validation", "test"]
    else:
        named = {}
        for k, cols in parts.items():
            name = SPLIT_NAMES.get(str(k).lower(), str(k))
            if name in named:
                raise UsageError(f"{path}: two splits mean '{name}' ({', '.join(map(str, parts))})")
            named[name] = cols
        if "train" not in named:
            raise UsageError(
                f"{path}: a dataset with splits needs a 'train' split; it has {', '.join(map(str, parts))}"
            )
        source = named.pop("train")
        missing = [s for s in ("validation", "test") if s not in named]
    carved = split_indices(
        len(source[key]),
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        labels=source.get("label"),
        groups=source["context"] if task == "extractive-qa" else None,
        only=missing,
    )
    # splits the data brings are kept whole; missing validation/test are carved out of train
    by_split = {s: (source, idx) for s, idx in carved.items() if s == "train" or s in missing}
    by_split.update({s: (cols, list(range(len(cols[key])))) for s, cols in named.items()})
    check_split_sizes(
        {s: len(idx) for s, (_, idx) in by_split.items()},
        rows=len(source[key]),
        fractions={"validation": validation_fraction, "test": test_fraction},
        carved=missing,
        where=str(path),
    )
    if max_examples is not None:  # each split capped, seeded and stratified, as for named datasets
        by_split = {
            s: (cols, catalog._take(idx, max_examples, cols.get("label"), seed)[1] if len(idx) > max_examples else idx)
            for s, (cols, idx) in by_split.items()
        }
    if "label" in REQUIRED[task]:
        cols, idx = by_split["train"]
        every = [k for c in parts.values() for k in c["label"]]
        check_classes([cols["label"][i] for i in idx], names, where=str(path), all_labels=every)
    order = [s for s in catalog.SPLITS if s in by_split] + [s for s in by_split if s not in catalog.SPLITS]
    data = DatasetDict({s: _dataset(*by_split[s], features=features, split=s) for s in order})
    data.dropped_rows = dropped  # read with dropped_rows(data), for the manifest
    return data, task


def load_data(
    source: str | Path,
    *,
    task: str | None = None,
    columns: Mapping[str, str] | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_examples: int | None = None,
    drop_invalid: bool = False,
) -> tuple[datasets.DatasetDict, str]:
    """(train/validation/test DatasetDict in canonical columns, task kind) of a named dataset or a user file.

    A user file (.csv/.tsv/.jsonl/.json/.parquet, or a save_to_disk folder) has its columns renamed through
    `columns` (canonical -> user name) and its task inferred from them unless given. String labels become ids
    of their sorted unique names (a ClassLabel). Data without splits gets seeded train/validation/test splits
    (stratified by label; QA grouped by context); data with splits keeps them (a train split is required) and
    gets any missing validation/test carved from train.

    A user file's rows without a label (or text) are an error naming how many there are, unless `drop_invalid`:
    then they are dropped before splitting and `dropped_rows(data)` says how many. Degenerate data is refused
    (see prunekit.tasks.checks for the thresholds): an empty split the run uses, or one class to train on.
    """
    name = str(source)
    if name in catalog.DATASETS and not Path(name).expanduser().exists():
        info = catalog.DATASETS[name]
        if task is not None and task != info.task:
            raise UsageError(f"dataset '{name}' is a {info.task} dataset, not {task}")
        if columns:
            raise UsageError(f"dataset '{name}' already has canonical columns: columns only maps a file's columns")
        data = catalog.load_task_data(
            name,
            data_dir=data_dir,
            seed=seed,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            max_examples=max_examples,
        )
        return data, info.task
    if not Path(name).expanduser().exists():
        raise UsageError(
            f"'{name}' is neither a named dataset ({', '.join(catalog.DATASETS)}) nor an existing file or folder"
        )
    return load_user_data(
        name,
        task=task,
        columns=columns,
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        max_examples=max_examples,
        drop_invalid=drop_invalid,
    )


def evaluation_data(
    path: str | Path,
    *,
    task: str | None,
    columns: Mapping[str, str] | None = None,
    label_names: Sequence[str] | None = None,
    drop_invalid: bool = False,
) -> datasets.Dataset:
    """One user file, whole and unsplit, in canonical columns (for `prunekit evaluate --data FILE`).

    Pass `label_names` (the model's classes, in id order) when the file spells labels as names, so that they
    get the model's ids rather than ids of this file's own sorted names. A folder with splits gives its test
    split, else its validation split. Rows without a label or text are an error unless `drop_invalid`; a file
    without rows is an error (its metrics would be NaN).
    """
    parts, task, names, _ = _canonical_parts(
        path, task, columns, label_names, drop_invalid=drop_invalid, fix="fix them or remove those rows"
    )
    if len(parts) == 1:
        cols = next(iter(parts.values()))
    else:
        by_name = {SPLIT_NAMES.get(str(k).lower(), str(k)): v for k, v in parts.items()}
        for s in ("test", "validation"):
            if s in by_name:
                cols = by_name[s]
                break
        else:
            raise UsageError(f"{path} has splits {', '.join(map(str, parts))} but no test or validation split")
    check_eval_rows(len(cols[REQUIRED[task][0]]), str(path))
    return _dataset(cols, None, features=_features(task, names))
