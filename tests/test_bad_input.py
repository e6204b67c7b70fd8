"""Bad input, CLI and API: one line on stderr naming the problem and the fix, exit code 2 (bad input) or 1 (run
time), no traceback unless --debug, and nothing left behind: neither the output directory nor its hidden
`.NAME.partial` / `.NAME.tmp-*` siblings.

The CLI runs in-process here (prunekit.cli.main with sys.argv set; the same code path as the `prunekit`
script, minus the interpreter start-up); test_cli.py and the --debug test below check real processes.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import prunekit
from prunekit import cli
from prunekit.catalog import load_model
from prunekit.core.errors import PrunekitError, UsageError
from prunekit.core.files import fingerprint
from prunekit.recipe import load_recipe
from tiny import tiny_model
from train_fixtures import sentiment_csv, tiny_bert_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny BERT with the real MiniLM tokenizer, a sentiment CSV, a recipe, and a compacted run directory."""
    root = tmp_path_factory.mktemp("bad")
    model_dir = tiny_bert_dir(root)
    csv_path = sentiment_csv(root, n=80)
    recipe = root / "recipe.yaml"
    recipe.write_text(
        f"model: {model_dir}\n"
        f"data: {{dataset: {csv_path}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 2}\n"
        "method: {name: magnitude, pattern: neuron, sparsity: 0.5}\n"
        "bench: {enabled: false}\n"
    )
    run = root / "run"
    model, tok = load_model(str(model_dir), num_labels=2)
    columns = {"text": "review", "label": "verdict"}
    prunekit.save(
        model,
        run,
        tok,
        source_model=str(model_dir),
        source_fingerprint=fingerprint(model_dir),
        method="test",
        task={"kind": "classification", "dataset": str(csv_path), "main_metric": "accuracy", "columns": columns},
        recipe={"data": {"dataset": str(csv_path), "columns": columns, "seed": 0}, "train": {"max_length": 16}},
        split={"file": str(csv_path), "seed": 0, "fingerprint": fingerprint(csv_path)},
    )
    return {"root": root, "model": model_dir, "csv": csv_path, "recipe": recipe, "run": run}


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """(exit code, stderr) of `prunekit ARGS`, in-process."""
    monkeypatch.setattr(sys, "argv", ["prunekit", *args])
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_clean_failure(code: int, stderr: str, want_code: int, message: str, out: Path | None) -> None:
    assert code == want_code, (code, stderr)
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], stderr
    assert "Traceback" not in stderr
    if out is not None:
        assert not out.exists(), out
        left = sorted(p.name for p in out.parent.glob(f".{out.name}.*"))
        assert not left, left  # no .NAME.partial, .NAME.tmp-*, .NAME.partial.tmp-*


def _copy_run(files, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    return run


# ---------------------------------------------------------------- recipes: names, keys, ranges, patterns

PRUNE_CASES = [
    # (--set overrides, exit code, what the line must say)
    (["model=no-such-model"], 2, "unknown model 'no-such-model': use one of minilm-l6"),
    (["data.dataset=no-such-data"], 2, "'no-such-data' is neither a named dataset"),
    (["data.task=no-such-task"], 2, "unknown task 'no-such-task': use one of classification"),
    (["method.name=no-such-method"], 2, "unknown method 'no-such-method': use one of "),
    (["train.no_such_key=1"], 2, "unknown key 'train.no_such_key'"),
    (["no_such_section=1"], 2, "unknown key 'no_such_section'"),
    (["method.no_such_field=1"], 2, "unknown key 'no_such_field'"),
    (["method.sparsity=1.5"], 2, "sparsity 1.5 is outside [0, 1)"),
    (["method.sparsity=-0.1"], 2, "sparsity -0.1 is outside [0, 1)"),
    (["train.lr=-1"], 2, "'train.lr': Input should be greater than 0"),
    (["method.pattern=4:4"], 2, "invalid N:M pattern '4:4': need 0 < N < M"),
    (["method.pattern=3:2"], 2, "invalid N:M pattern '3:2'"),
    (["method.pattern=3:5"], 2, "3:5 needs in_features divisible by 5, this matrix has 32; set pad_tail: true"),
    (["method.pattern=5x5"], 2, "block 5x5 does not divide bert.encoder.layer.0.attention.self.query"),
    (["method.pattern=hexagon"], 2, "unknown sparsity pattern 'hexagon'"),
    (["data.columns.text=no_such_column"], 2, "no_such_column"),
]


@pytest.mark.parametrize("overrides,code,message", PRUNE_CASES, ids=[c[0][0] for c in PRUNE_CASES])
def test_bad_recipe_values(overrides, code, message, files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    sets = [x for o in overrides for x in ("--set", o)]
    got, stderr = run_cli(capsys, monkeypatch, "prune", str(files["recipe"]), "--out", str(out), "--no-progress", *sets)
    # one line also means: refused before any training or evaluation logged a line
    assert_clean_failure(got, stderr, code, message, out)


def test_bad_recipe_files(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(tmp_path / "missing.yaml"), "--out", str(out))
    assert_clean_failure(code, stderr, 2, "recipe '", out)
    assert "not found: give a YAML file" in stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(bad), "--out", str(out))
    assert_clean_failure(code, stderr, 2, "is not valid YAML", out)
    bad.write_text("- a list\n")
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(bad), "--out", str(out))
    assert_clean_failure(code, stderr, 2, "must be a mapping of sections", out)
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(files["recipe"]), "--out", str(out), "--set", "train")
    assert_clean_failure(code, stderr, 2, "has no '='", out)


def test_n_m_patterns_in_yaml_stay_patterns(files, tmp_path):
    """YAML 1.1 reads an unquoted 2:4 as the base-60 number 124; recipes read it as the pattern."""
    path = tmp_path / "nm.yaml"
    path.write_text(files["recipe"].read_text().replace("pattern: neuron", "pattern: 2:4"))
    assert load_recipe(path).method["pattern"] == "2:4"
    assert load_recipe(path, ["method.pattern=1:4", "train.lr=1e-3"]).method["pattern"] == "1:4"
    assert load_recipe(path, ["train.lr=1e-3"]).train.lr == 1e-3


# ---------------------------------------------------------------- compact: patterns, targets, architectures


@pytest.mark.parametrize(
    "spec,message",
    [
        ("heads=1.5", "sparsity 1.5 is outside [0, 1)"),
        ("neurons=-0.2", "sparsity -0.2 is outside [0, 1)"),
        ("3:2", "invalid N:M pattern '3:2'"),
        ("4:4", "invalid N:M pattern '4:4'"),
        ("3:5", "3:5 needs in_features divisible by 5"),
        ("5x5=0.5", "block 5x5 does not divide"),
        ("0x4=0.5", "block sides must be positive"),
        ("heads=abc", "'abc' is not a number"),
    ],
)
def test_bad_prune_specs(spec, message, files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(files["model"]), str(out), "-p", spec)
    assert_clean_failure(code, stderr, 2, message, out)


def test_target_removing_every_head_of_every_layer(files, tmp_path, capsys, monkeypatch):
    """A model whose attention output projections are all zero: removing 'what is already zero' would take every
    head of every layer. Refused, CLI and API; `compact` itself still compacts explicit masks exactly."""
    model = BertForSequenceClassification.from_pretrained(files["model"])
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.output.dense.weight.zero_()
    folder = tmp_path / "zero-attention"
    model.save_pretrained(folder)
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(folder), str(out))
    assert_clean_failure(code, stderr, 2, "removes every head of every layer", out)
    assert "keep at least one head" in stderr
    from prunekit.api import check_keeps_attention
    from prunekit.masks import LayerMask, MaskSet

    masks = MaskSet(layers={i: LayerMask(heads=torch.zeros(4, dtype=torch.bool)) for i in range(2)})
    with pytest.raises(UsageError, match="every head of every layer"):
        check_keeps_attention(model, masks)
    masks.layers[1].heads[0] = True
    check_keeps_attention(model, masks)  # one head left somewhere: fine


def test_unsupported_architecture(tmp_path, capsys, monkeypatch):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=8,
                    patch_size=4)  # fmt: skip
    ViTModel(cfg).save_pretrained(tmp_path / "vit")
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(tmp_path / "vit"), str(out), "-p", "heads=0.5",
                           "--head", "base")  # fmt: skip
    assert_clean_failure(code, stderr, 2, "unsupported architecture 'vit'", out)
    assert "bert" in stderr


def test_folder_that_is_not_a_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(tmp_path / "empty"), str(out), "-p", "heads=0.5")
    assert_clean_failure(code, stderr, 2, "is a folder without config.json", out)


# ---------------------------------------------------------------- damaged run directories and model folders


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_header(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"\xff" * 8)


def _garble_data(path: Path) -> None:  # the header stays valid: only the checksum can tell
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size - 64)
        fh.write(b"\x01" * 16)


def _edit_manifest(change):
    def edit(path: Path) -> None:
        m = json.loads(path.read_text())
        change(m)
        path.write_text(json.dumps(m))

    return edit


DAMAGE = [
    # (file, damage, exit code, message)
    ("model.safetensors", Path.unlink, 2, "has no model.safetensors: the run did not finish; re-run it"),
    ("model.safetensors", _truncate, 1, "model.safetensors is corrupt or truncated"),
    ("model.safetensors", _garble_header, 1, "model.safetensors is corrupt or truncated"),
    ("model.safetensors", _garble_data, 1, "model.safetensors is corrupt or truncated (checksum differs"),
    ("model.safetensors", lambda p: p.write_bytes(b""), 1, "model.safetensors is corrupt or truncated"),
    ("prunekit.json", Path.unlink, 2, "has no prunekit.json: it is not a prunekit run directory"),
    ("prunekit.json", _truncate, 1, "prunekit.json is corrupt (JSONDecodeError): restore it or re-run the job"),
    ("prunekit.json", lambda p: p.write_bytes(b"\xff\xfe\x00"), 1, "prunekit.json is corrupt (UnicodeDecodeError)"),
    ("prunekit.json", lambda p: p.write_text("[]"), 1, "prunekit.json is invalid at"),
    ("prunekit.json", _edit_manifest(lambda m: m.pop("structure")), 1, "prunekit.json is invalid at 'structure'"),
    ("prunekit.json", _edit_manifest(lambda m: m["structure"][0].update(heads=-1)), 1, "at 'structure.0.heads'"),
    ("prunekit.json", _edit_manifest(lambda m: m["structure"][0].update(heads=99)), 1, "per-layer structure is"),
    ("prunekit.json", _edit_manifest(lambda m: m["structure"].pop()), 1, "does not describe this model"),
    ("prunekit.json", _edit_manifest(lambda m: m.update(model_class="Popen")), 1, "model class 'Popen'"),
    ("config.json", Path.unlink, 2, "has no config.json: the run directory is incomplete"),
    ("config.json", _truncate, 1, "config.json is corrupt"),
]


# damaged weights through every command that reads them; a damaged manifest / config through two
DAMAGE_CASES = [
    (command, *case)
    for case in DAMAGE
    for command in (
        ("evaluate", "bench", "export", "compact") if case[0] == "model.safetensors" else ("evaluate", "bench")
    )
]


@pytest.mark.parametrize("command,name,damage,code,message", DAMAGE_CASES)
def test_damaged_run_directory(command, name, damage, code, message, files, tmp_path, capsys, monkeypatch):
    run = _copy_run(files, tmp_path)
    damage(run / name)
    out = tmp_path / "out"
    args = {
        "evaluate": ["evaluate", str(run)],
        "bench": ["bench", str(run)],
        "export": ["export", str(run), "--out", str(out)],
        "compact": ["compact", str(run), str(out)],
    }[command]
    got, stderr = run_cli(capsys, monkeypatch, *args)
    assert_clean_failure(got, stderr, code, message, out)


def test_damaged_api_loads(files, tmp_path):
    run = _copy_run(files, tmp_path)
    _garble_data(run / "model.safetensors")
    with pytest.raises(PrunekitError, match="corrupt or truncated"):
        prunekit.load(run)
    shutil.copy(files["run"] / "model.safetensors", run / "model.safetensors")
    assert prunekit.load(run) is not None


def test_model_folder_with_truncated_weights(files, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(files["model"], folder)
    _truncate(folder / "model.safetensors")
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(folder), str(out), "-p", "heads=0.5")
    assert_clean_failure(code, stderr, 1, "are corrupt or truncated", out)


# ---------------------------------------------------------------- tokenizer / model mismatches


@pytest.fixture(scope="module")
def mismatched(files):
    """A 97-token model next to the 30522-token MiniLM tokenizer."""
    folder = files["root"] / "mismatched"
    cfg = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    for f in files["model"].glob("tokenizer*"):
        shutil.copy(f, folder)
    return folder


def test_tokenizer_larger_than_the_embedding(mismatched, files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    message = "has 30522 tokens but the model's embedding has 97 rows"
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(files["recipe"]), "--out", str(out), "--no-progress",
                           "--set", f"model={mismatched}")  # fmt: skip
    assert_clean_failure(code, stderr, 2, message, out)
    assert "use the tokenizer the model was trained with" in stderr
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(mismatched), str(out), "-p", "heads=0.5")
    assert_clean_failure(code, stderr, 2, message, out)
    from prunekit.catalog import load_model

    with pytest.raises(UsageError, match=message):
        load_model(str(mismatched), num_labels=2)
    # a run directory that carries the wrong tokenizer: caught when it is loaded with its tokenizer
    run = _copy_run(files, tmp_path)
    prunekit.save(tiny_model("bert"), tmp_path / "run97", method="test")  # vocabulary 97
    for f in files["model"].glob("tokenizer*"):
        shutil.copy(f, tmp_path / "run97")
    with pytest.raises(UsageError, match="has 30522 tokens but the model's embedding has 97 rows"):
        prunekit.load(tmp_path / "run97", with_tokenizer=True)
    assert prunekit.load(run, with_tokenizer=True)[1] is not None


def test_model_without_tokenizer_and_with_another_head(files, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "weights-only"
    BertForSequenceClassification.from_pretrained(files["model"]).save_pretrained(folder)  # no tokenizer files
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(files["recipe"]), "--out", str(out), "--no-progress",
                           "--set", f"model={folder}")  # fmt: skip
    assert_clean_failure(code, stderr, 2, "has no tokenizer files: copy the tokenizer", out)
    # compacting needs no tokenizer
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(folder), str(out), "-p", "heads=0.5")
    assert code == 0, stderr
    # a 3-label classifier fine-tuned elsewhere, pruned on 2-label data
    three = tmp_path / "three-labels"
    shutil.copytree(files["model"], three)
    cfg = json.loads((three / "config.json").read_text())
    m = BertForSequenceClassification(BertConfig(**(cfg | {"num_labels": 3, "id2label": None, "label2id": None})))
    m.save_pretrained(three)
    out2 = tmp_path / "out2"
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(files["recipe"]), "--out", str(out2), "--no-progress",
                           "--set", f"model={three}")  # fmt: skip
    assert_clean_failure(code, stderr, 2, "its head was trained for 3", out2)


# ---------------------------------------------------------------- existing outputs, full disks


def test_existing_output_directory(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for args in (
        ["prune", str(files["recipe"]), "--out", str(out)],
        ["compact", str(files["model"]), str(out), "-p", "heads=0.5"],
        ["finetune", str(files["model"]), str(files["csv"]), str(out), "--column", "text=review"],
    ):
        code, stderr = run_cli(capsys, monkeypatch, *args)
        assert code == 2 and "output directory" in stderr and "exists" in stderr and "--overwrite" in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1
        assert (out / "keep.txt").read_text() == "mine" and not list(tmp_path.glob(".out*"))
    target = tmp_path / "model.onnx"
    target.write_text("x")
    code, stderr = run_cli(capsys, monkeypatch, "export", str(files["run"]), "--out", str(target))
    assert code == 2 and "exists: choose another --out or pass --overwrite" in stderr


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")


def test_full_disk_while_saving(files, tmp_path, capsys, monkeypatch):
    """Saving (API and CLI) on a full disk: one line, nothing left behind."""
    import transformers.modeling_utils

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _disk_full)
    out = tmp_path / "out"
    with pytest.raises(PrunekitError, match="no space left on the device while writing .*free disk space"):
        prunekit.save(tiny_model("bert"), out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    code, stderr = run_cli(capsys, monkeypatch, "compact", str(files["model"]), str(out), "-p", "heads=0.5")
    assert_clean_failure(code, stderr, 1, "no space left on the device while writing", out)


def test_full_disk_during_training_leaves_nothing(files, tmp_path, capsys, monkeypatch):
    """The first checkpoint fails: nothing to resume, so nothing is kept."""
    import prunekit.train.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "save_file", _disk_full)
    out = tmp_path / "out"
    code, stderr = run_cli(capsys, monkeypatch, "prune", str(files["recipe"]), "--out", str(out), "--no-progress",
                           "--set", "train.epochs=1")  # fmt: skip
    lines = stderr.strip().splitlines()
    assert code == 1 and lines[-1].startswith("error: no space left on the device while writing"), stderr
    assert "free disk space" in lines[-1] and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_full_disk_at_the_final_save_keeps_the_run_for_resume(files, tmp_path, capsys, monkeypatch):
    """Training is done when the disk fills: the run is kept (its checkpoints make it resumable) and the line
    says so; after space is freed, --resume finishes it."""
    import transformers.modeling_utils

    real = transformers.modeling_utils.safe_save_file
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _disk_full)
    out = tmp_path / "out"
    args = ["prune", str(files["recipe"]), "--out", str(out), "--no-progress", "--set", "train.epochs=1"]
    code, stderr = run_cli(capsys, monkeypatch, *args)
    last = stderr.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: no space left on the device"), stderr
    assert f"the interrupted run is kept in {tmp_path / '.out.partial'}" in last and "pass --resume" in last
    assert not out.exists() and (tmp_path / ".out.partial" / "checkpoints").exists()
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", real)
    code, stderr = run_cli(capsys, monkeypatch, *args, "--resume")
    assert code == 0, stderr
    assert prunekit.load(out) is not None and not list(tmp_path.glob(".out*"))


# ---------------------------------------------------------------- --debug, and a real process


def test_debug_shows_the_traceback_and_a_process_prints_one_line(tmp_path):
    cmd = [sys.executable, "-m", "prunekit.cli", "compact", "no-such-model", str(tmp_path / "out"), "-p", "heads=0.5"]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and plain.stderr.strip().startswith("error: unknown model 'no-such-model'")
    assert len(plain.stderr.strip().splitlines()) == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UsageError" in debug.stderr
    assert not (tmp_path / "out").exists()
