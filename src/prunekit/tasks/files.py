"""Reading users' data files into plain columns by split: CSV/TSV, JSONL, JSON, Parquet, save_to_disk folders.

Values are left as the file has them (CSV: all strings); `prunekit.tasks.data` turns them into canonical columns.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import ClassLabel, Dataset, load_from_disk

from prunekit.core.errors import UsageError

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
FILE_TYPES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")

Columns = dict[str, list]
Parts = dict[str | None, Columns]  # split name (None: the file has no splits) -> columns


def _rows_to_columns(rows: Sequence[Mapping], where: str) -> Columns:
    names: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UsageError(f"{where}: record {i + 1} is a {type(row).__name__}, not an object with named fields")
        names.update(dict.fromkeys(row))
    return {n: [row.get(n) for row in rows] for n in names}


def _squad_rows(articles: list[dict]) -> list[dict]:
    """SQuAD-format JSON (data -> paragraphs -> qas) flattened to one row per question."""
    rows = []
    for article in articles:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows.append(
                    {
                        "id": str(qa.get("id", len(rows))),
                        "title": article.get("title", ""),
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": qa.get("answers", []),
                    }
                )
    return rows


def _read_json(path: Path) -> Parts:
    where = str(path)
    obj = json.loads(path.read_text(encoding="utf-8-sig"))
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        data = obj["data"]
        if data and isinstance(data[0], dict) and "paragraphs" in data[0]:
            return {None: _rows_to_columns(_squad_rows(data), where)}
        obj = data
    if isinstance(obj, list):
        return {None: _rows_to_columns(obj, where)}
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        if all(k in SPLIT_NAMES for k in obj):  # {"train": [records], "test": [records]}
            return {k: _rows_to_columns(v, f"{where} [{k}]") for k, v in obj.items()}
        lengths = {len(v) for v in obj.values()}
        if len(lengths) == 1:  # columnar: {"text": [...], "label": [...]}
            return {None: dict(obj)}
    raise UsageError(
        f"{where}: expected a list of records, {{column: [values]}}, {{split: [records]}} or SQuAD-format JSON"
    )


def _read_file(path: Path) -> Parts:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = list(reader)
            if not reader.fieldnames:
                raise UsageError(f"{path} is empty: a CSV needs a header row naming its columns")
        return {None: {n: [r.get(n) for r in rows] for n in reader.fieldnames}}
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{path} line {n} is not JSON: {exc.msg}") from exc
        return {None: _rows_to_columns(rows, str(path))}
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return {None: pq.read_table(path).to_pydict()}
    raise UsageError(f"{path}: unsupported file type; use {', '.join(FILE_TYPES)} or a save_to_disk folder")


def _read_folder(path: Path) -> tuple[Parts, dict[str, list[str]]]:
    """A save_to_disk folder's splits, plus the names of any ClassLabel columns (kept, not re-derived)."""
    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{path} is a folder but not one written by datasets' save_to_disk ({exc})") from exc
    splits: dict[str | None, Dataset] = {None: loaded} if isinstance(loaded, Dataset) else dict(loaded)
    names: dict[str, list[str]] = {}
    for ds in splits.values():
        for col, feature in ds.features.items():
            if isinstance(feature, ClassLabel):
                names[col] = list(feature.names)
    return {k: ds.to_dict() for k, ds in splits.items()}, names


def read_parts(path: str | Path) -> tuple[Parts, dict[str, list[str]]]:
    """The raw columns of a user file or folder, by split, and the ClassLabel names it declares."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _read_folder(p)
    if not p.is_file():
        raise UsageError(f"no such file or folder: {p}")
    try:
        return _read_file(p), {}
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read {p}: {type(exc).__name__}: {str(exc)[:200]}") from exc
