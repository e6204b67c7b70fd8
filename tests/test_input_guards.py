"""Input guards of issue 29: empty or malformed recipes, numeric patterns, unlabeled rows, degenerate data and
over-long max_length are refused with one line that names the fix (no model is trained here)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from prunekit.core.errors import UsageError
from prunekit.recipe import apply_overrides, load_recipe, parse_recipe
from prunekit.tasks import evaluation_data, load_data


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def _csv(path, rows, fields=("text", "label")):
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return path


def _labelled(n: int, classes=("neg", "pos")) -> list[dict]:
    return [{"text": f"review number {i}", "label": classes[i % len(classes)]} for i in range(n)]


# --- 1, 2: recipe files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "null\n", "~\n", "{}\n"])
def test_empty_recipe_is_refused_not_the_default_job(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_recipe(path)
    msg = _one_line(err)
    assert msg.startswith(f"recipe '{path}' is empty: ")
    assert "examples/" in msg and "prunekit demo" in msg


@pytest.mark.parametrize(
    "text,kind", [("[]\n", "list"), ("''\n", "string"), ("- a\n- b\n", "list"), ("42\n", "number")]
)
def test_recipe_that_is_not_a_mapping_is_one_line(tmp_path, text, kind):
    path = tmp_path / "flat.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match="must be a mapping of sections") as err:
        load_recipe(path)
    assert kind in _one_line(err)


@pytest.mark.parametrize(
    "text,where",
    [
        ("model: minilm-l6\ntrain:\n  epochs: 2\n   lr: 1.0e-3\n", "line 4, column 6"),
        ("model: minilm-l6\nmethod: {name: magnitude, sparsity: 0.5\n", "line 3, column 1"),
        ("model: minilm-l6\n\tdata: x\n", "line 2, column 1"),
    ],
)
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_recipe(path)
    msg = _one_line(err)
    assert msg.startswith(f"recipe '{path}' is not valid YAML at {where}: ")


def test_unclosed_bracket_also_names_where_it_opened(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: minilm-l6\nmethod: {name: magnitude, sparsity: 0.5\n")
    with pytest.raises(UsageError, match=r"starts at line 2, column 9"):
        load_recipe(path)


def test_set_value_that_is_not_yaml_is_one_line():
    with pytest.raises(UsageError, match=r"--set 'method.pattern=\[2:4': the value is not valid YAML") as err:
        apply_overrides({"model": "minilm-l6"}, ["method.pattern=[2:4"])
    _one_line(err)


# --- 3: numeric patterns -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,number",
    [
        ("{name: magnitude, pattern: 0x32, sparsity: 0.5}", "50"),  # hex
        ("{name: asp, pattern: 24}", "24"),  # an N:M written without the colon
        ("{name: movement, pattern: [2:4, 0x32]}", "50"),  # in a list of patterns
        ("{name: l1, pattern: 1.5}", "1.5"),
        ("{name: admm, pattern: 0b11}", "3"),
    ],
)
def test_pattern_read_as_a_number_says_quote_it(tmp_path, method, number):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: minilm-l6\nmethod: {method}\n")
    with pytest.raises(UsageError) as err:
        load_recipe(path)
    msg = _one_line(err)
    assert f"'pattern' got the number {number}" in msg
    assert "YAML read" in msg and "quote it" in msg and 'pattern: "2:4"' in msg
    assert "valid string" not in msg  # not pydantic's own words


def test_pattern_number_from_set_override_and_quoted_pattern_is_fine(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text('model: minilm-l6\nmethod: {name: magnitude, pattern: "2:4", sparsity: 0.5}\n')
    assert load_recipe(path).method["pattern"] == "2:4"
    with pytest.raises(UsageError, match="YAML read the unquoted value as a number"):
        load_recipe(path, ["method.pattern=0x32"])


# --- 4: the missing-column hint ------------------------------------------------------------------------------


def test_missing_column_hint_names_the_cli_option_column(tmp_path):
    path = _csv(tmp_path / "reviews.csv", [{"review": f"r{i}", "stars": i % 2} for i in range(10)], ("review", "stars"))
    with pytest.raises(UsageError) as err:
        load_data(str(path), task="classification", columns={"text": "review"})
    msg = _one_line(err)
    assert "--column label=NAME" in msg and "--columns" not in msg
    assert "data.columns" in msg


# --- 5: unlabeled rows ---------------------------------------------------------------------------------------


def test_unlabeled_rows_are_counted_not_stopped_at_the_first(tmp_path):
    rows = _labelled(40)
    for i in (12, 20, 33):  # 0-based: the first is data row 13
        rows[i]["label"] = ""
    path = _csv(tmp_path / "reviews.csv", rows)
    with pytest.raises(UsageError) as err:
        load_data(str(path))
    msg = _one_line(err)
    assert msg == (
        f"{path}: 3 of 40 rows have no label (first: row 13): fix them or set data.drop_invalid: true to drop them "
        "(--set data.drop_invalid=true)"
    )


def test_unlabeled_row_counts_use_thousands_separators(tmp_path):
    rows = _labelled(2500)
    for i in range(112, 2500, 2):
        rows[i]["label"] = " "  # blank counts as missing too
    path = _csv(tmp_path / "big.csv", rows)
    with pytest.raises(UsageError, match=r"1,194 of 2,500 rows have no label \(first: row 113\)"):
        load_data(str(path))


def test_drop_invalid_drops_before_splitting_and_counts(tmp_path):
    from prunekit.tasks.data import dropped_rows

    rows = _labelled(40)
    rows[3]["label"] = ""
    rows[7]["text"] = ""
    rows[9]["label"] = ""
    path = _csv(tmp_path / "reviews.csv", rows)
    with pytest.raises(UsageError, match=r"2 of 40 rows have no label .* and 1 has no text in column 'text'"):
        load_data(str(path))
    data, task = load_data(str(path), drop_invalid=True)
    assert task == "classification" and dropped_rows(data) == 3
    assert sum(len(s) for s in data.values()) == 37
    assert {k: len(v) for k, v in data.items()} == {"train": 29, "validation": 4, "test": 4}  # fractions of 37
    texts = {t for s in data.values() for t in s["text"]}
    assert not texts & {"review number 3", "review number 7", "review number 9", ""}
    again, _ = load_data(str(path), drop_invalid=True)
    assert again["test"]["text"] == data["test"]["text"]  # reproducible: `prunekit evaluate` re-makes it
    clean, _ = load_data(str(_csv(tmp_path / "clean.csv", _labelled(40))))
    assert dropped_rows(clean) == 0


def test_drop_invalid_is_a_recipe_field(tmp_path):
    tree = {"model": "minilm-l6", "data": {"dataset": "x.csv"}, "method": {"name": "dense"}}
    assert parse_recipe(tree).data.drop_invalid is False
    assert parse_recipe(apply_overrides(tree, ["data.drop_invalid=true"])).data.drop_invalid is True


def test_drop_invalid_leaving_nothing_and_evaluation_files(tmp_path):
    path = _csv(tmp_path / "none.csv", [{"text": f"t{i}", "label": ""} for i in range(3)])
    with pytest.raises(UsageError, match="3 of 3 rows have no label .* leaves no rows"):
        load_data(str(path), task="classification", drop_invalid=True)
    rows = _labelled(6)
    rows[2]["label"] = ""
    path = _csv(tmp_path / "eval.csv", rows)
    with pytest.raises(UsageError, match=r"1 of 6 rows have no label \(first: row 3\): fix them or remove those rows"):
        evaluation_data(str(path), task="classification")
    assert len(evaluation_data(str(path), task="classification", drop_invalid=True)) == 5


# --- 6: degenerate data --------------------------------------------------------------------------------------


def test_one_row_file_is_refused_with_the_fix(tmp_path):
    path = _csv(tmp_path / "one.csv", [{"text": "great", "label": "pos"}])
    with pytest.raises(UsageError) as err:
        load_data(str(path))
    msg = _one_line(err)
    assert f"{path} has 1 row" in msg
    assert "data.validation_fraction 0.1 and data.test_fraction 0.1 give 0 validation and 0 test rows" in msg
    assert "at least 6 rows" in msg


def test_split_sizes_thresholds(tmp_path):
    from prunekit.tasks.checks import rows_needed

    path = _csv(tmp_path / "small.csv", _labelled(8))
    with pytest.raises(UsageError, match=r"has 8 rows: data.test_fraction 0.05 gives 0 test rows; give at least 11"):
        load_data(str(path), validation_fraction=0.25, test_fraction=0.05)
    data, _ = load_data(str(path), validation_fraction=0.25, test_fraction=0.0)  # 0: no test split asked for
    assert {k: len(v) for k, v in data.items()} == {"train": 6, "validation": 2, "test": 0}
    two = _csv(tmp_path / "two.csv", _labelled(2))
    with pytest.raises(UsageError, match="has 2 rows and all of them went to 1 validation and 1 test, none is left"):
        load_data(str(two), validation_fraction=0.4, test_fraction=0.4)
    assert [rows_needed(f) for f in (0.1, 0.05, 0.5, 0.9)] == [6, 11, 2, 1]


def test_single_class_training_data_is_refused(tmp_path):
    path = _csv(tmp_path / "same.csv", [{"text": f"t{i}", "label": "pos"} for i in range(30)])
    with pytest.raises(UsageError) as err:
        load_data(str(path))
    msg = _one_line(err)
    assert "all 30 rows have label 'pos'" in msg and "at least 2 classes" in msg
    ints = _csv(tmp_path / "ints.csv", [{"text": f"t{i}", "label": 1} for i in range(30)])
    with pytest.raises(UsageError, match="at least 2 classes"):
        load_data(str(ints))


def test_header_only_file_cannot_be_evaluated(tmp_path):
    path = _csv(tmp_path / "header.csv", [])
    with pytest.raises(UsageError) as err:
        evaluation_data(str(path), task="classification", label_names=["neg", "pos"])
    assert "no rows to evaluate on" in _one_line(err)
    one = _csv(tmp_path / "one.csv", [{"text": "fine", "label": "pos"}])  # one class is fine to evaluate on
    assert len(evaluation_data(str(one), task="classification", label_names=["neg", "pos"])) == 1


def test_empty_split_brought_by_the_data(tmp_path):
    import json

    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": _labelled(20), "test": []}))
    with pytest.raises(UsageError, match=r"its 'test' split has no rows"):
        load_data(str(path), task="classification")


# --- 7: max_length -------------------------------------------------------------------------------------------


def test_check_max_length_against_position_embeddings():
    from transformers import BertConfig, GPT2Config, RobertaConfig

    from prunekit.tasks.checks import check_max_length, position_limit

    bert = BertConfig(max_position_embeddings=512)
    check_max_length(bert, 512)
    with pytest.raises(UsageError) as err:
        check_max_length(bert, 100000)
    msg = _one_line(err)
    assert "train.max_length 100,000" in msg and "512 tokens" in msg and "set train.max_length to 512 or less" in msg
    roberta = RobertaConfig(max_position_embeddings=514, pad_token_id=1)  # positions start at padding_idx + 1
    assert position_limit(roberta) == 512
    check_max_length(roberta, 512)
    with pytest.raises(UsageError, match="512 tokens"):
        check_max_length(roberta, 513)
    with pytest.raises(UsageError, match="1,024 tokens"):
        check_max_length(GPT2Config(n_positions=1024), 2048, key="finetune.max_length")
    check_max_length(SimpleNamespace(model_type="t5"), 100000)  # no recorded limit: not checked


def test_recipe_max_length_has_a_lower_bound():
    tree = {"model": "minilm-l6", "method": {"name": "dense"}, "train": {"max_length": 4}}
    with pytest.raises(UsageError, match="max_length"):
        parse_recipe(tree)
