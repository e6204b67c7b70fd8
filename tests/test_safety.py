"""Safety: weights are only read with safetensors or torch.load(weights_only=True); a model's own code runs only
with --trust-remote-code; manifests are validated before use; a path a manifest names cannot point prunekit
anywhere it did not record (no '../', no absolute paths, no swapped files)."""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest

import prunekit
from prunekit import cli
from prunekit.catalog import load_model
from prunekit.core.errors import UsageError
from prunekit.core.files import fingerprint
from train_fixtures import sentiment_csv, tiny_bert_dir

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"


def _calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            dotted = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if dotted == name:
                yield node


def _kw(call: ast.Call, key: str):
    for k in call.keywords:
        if k.arg == key:
            return k.value
    return None


def test_source_never_unpickles():
    """Every torch.load passes weights_only=True; nothing imports pickle (or its wrappers); nothing turns
    weights_only off or remote code on in the source."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        where = path.relative_to(SRC.parent)
        for call in _calls(tree, "load"):
            f = call.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch":
                value = _kw(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"):
                    offenders.append(f"{where}:{node.lineno}: imports {name}")
        for key, bad in (("weights_only", False), ("trust_remote_code", True)):
            for node in ast.walk(tree):
                value = node.value if isinstance(node, ast.keyword) and node.arg == key else None
                if isinstance(value, ast.Constant) and value.value is bad:
                    offenders.append(f"{where}:{value.lineno}: {key}={bad}")
        for fn in ast.walk(tree):  # a trust_remote_code parameter is required or defaults to False
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                args = fn.args.args + fn.args.kwonlyargs
                defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + fn.args.defaults
                defaults += fn.args.kw_defaults
                for arg, default in zip(args, defaults, strict=True):
                    if (
                        arg.arg == "trust_remote_code"
                        and default is not None
                        and not (isinstance(default, ast.Constant) and default.value is False)
                    ):
                        offenders.append(f"{where}:{fn.lineno}: {fn.name}(trust_remote_code) does not default to False")
    assert not offenders, "\n".join(offenders)


def test_every_hugging_face_load_states_trust_remote_code():
    """from_pretrained on configs, models and tokenizers of user-given sources passes trust_remote_code
    explicitly (the catalog's own registry packages, loaded from GGUF, are the one exception)."""
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "from_pretrained"):
            if _kw(call, "gguf_file") is None and _kw(call, "trust_remote_code") is None:
                missing.append(f"{path.relative_to(SRC.parent)}:{call.lineno}")
    assert not missing, missing


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    model_dir = tiny_bert_dir(root)
    csv_path = sentiment_csv(root, n=60)
    return {"root": root, "model": model_dir, "csv": csv_path}


def _remote_code_folder(model_dir: Path, folder: Path, marker: Path) -> Path:
    """A model folder whose config asks to run its own code; that code would create `marker`."""
    shutil.copytree(model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


def test_remote_code_is_refused_without_the_flag(fixtures, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = _remote_code_folder(fixtures["model"], tmp_path / "remote", marker)
    with pytest.raises(UsageError, match="ships its own code .* --trust-remote-code"):
        load_model(str(folder), num_labels=2)
    monkeypatch.setattr(sys, "argv", ["prunekit", "compact", str(folder), str(tmp_path / "out"), "-p", "heads=0.5"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "ships its own code (auto_map in its config.json)" in err
    assert "--trust-remote-code" in err and len(err.strip().splitlines()) == 1
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {folder}\ndata: {{dataset: {fixtures['csv']}, task: classification, "
        "columns: {text: review, label: verdict}}\nmethod: {name: dense}\nbench: {enabled: false}\n"
    )
    monkeypatch.setattr(
        sys, "argv", ["prunekit", "prune", str(recipe), "--out", str(tmp_path / "out"), "--no-progress"]
    )
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2 and "trust_remote_code: true" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_run_directory_with_remote_code_loads_without_running_it(fixtures, tmp_path):
    """prunekit.load builds the class its manifest names from transformers itself: auto_map is never followed."""
    model, tok = load_model(str(fixtures["model"]), num_labels=2)
    run = prunekit.save(model, tmp_path / "run", tok)
    marker = tmp_path / "REMOTE_CODE_RAN"
    cfg = json.loads((run / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    loaded, _ = prunekit.load(run, with_tokenizer=True)
    assert type(loaded).__name__ == "BertForSequenceClassification" and not marker.exists()


# ---------------------------------------------------------------- paths named by manifests


@pytest.fixture()
def run(fixtures, tmp_path):
    """A run directory whose manifest names its source model folder and its data file, with fingerprints."""
    model, tok = load_model(str(fixtures["model"]), num_labels=2)
    columns = {"text": "review", "label": "verdict"}
    csv_path = tmp_path / "data.csv"
    shutil.copy(fixtures["csv"], csv_path)
    source = tmp_path / "source"
    shutil.copytree(fixtures["model"], source)
    return prunekit.save(
        model,
        tmp_path / "run",
        tok,
        source_model=str(source),
        source_fingerprint=fingerprint(source),
        task={"kind": "classification", "dataset": str(csv_path), "main_metric": "accuracy", "columns": columns},
        recipe={"data": {"dataset": str(csv_path), "columns": columns, "seed": 0}, "train": {"max_length": 16}},
        split={"file": str(csv_path), "seed": 0, "fingerprint": fingerprint(csv_path)},
    )


def _set(run: Path, change) -> None:
    m = json.loads((run / "prunekit.json").read_text())
    change(m)
    (run / "prunekit.json").write_text(json.dumps(m))


def _set_dataset(value: str):
    def change(m):
        m["recipe"]["data"]["dataset"] = value
        m["task"]["dataset"] = value

    return change


def test_recorded_paths_are_used_when_they_match(run):
    from prunekit.api import evaluate_run, reference_for

    assert evaluate_run(str(run))["examples"] > 0
    assert reference_for(str(run)) is not None


@pytest.mark.parametrize(
    "value",
    ["../../../../../../etc/passwd", "/etc/passwd", "/etc", "../data.csv", "~/../../etc/hostname", "{tmp}/other.csv"],
)
def test_manifest_cannot_point_evaluate_at_other_files(value, run, tmp_path, monkeypatch):
    from prunekit import api
    from prunekit.api import evaluate_run

    (tmp_path / "other.csv").write_text("review,verdict\nsecret,pos\n")
    _set(run, _set_dataset(value.format(tmp=tmp_path)))
    monkeypatch.setattr(api, "load_data", lambda *a, **k: pytest.fail("read a file the manifest named"))
    with pytest.raises(UsageError, match=r"(does not exist here|does not match the checksum).*pass --data FILE"):
        evaluate_run(str(run))


def test_manifest_data_file_swapped_or_unrecorded(run, tmp_path):
    from prunekit.api import evaluate_run

    data = tmp_path / "data.csv"
    data.write_text(data.read_text() + "an extra line,pos\n")  # changed since the run was written
    with pytest.raises(UsageError, match="does not match the checksum .* recorded"):
        evaluate_run(str(run))
    _set(run, lambda m: m["split"].pop("fingerprint"))
    with pytest.raises(UsageError, match="records no checksum for it: pass --data FILE"):
        evaluate_run(str(run))
    assert evaluate_run(str(run), data=str(data))["examples"] == 61  # named by the user: fine


def test_manifest_data_dir_and_file_names_are_checked(run, tmp_path):
    from prunekit.api import evaluate_run

    def catalog(files):
        def change(m):
            _set_dataset("rotten_tomatoes")(m)
            m["recipe"]["data"]["data_dir"] = str(tmp_path)
            m["split"] = {"files": files, "seed": 0}

        return change

    for files in ([], [{"name": "../../etc/passwd", "sha256": "0"}], [{"name": "/etc/passwd", "sha256": "0"}]):
        _set(run, catalog(files))
        with pytest.raises(UsageError, match="without its files' checksums"):
            evaluate_run(str(run))
    _set(run, catalog([{"name": "rt_polarity.csv", "sha256": "0" * 64}]))
    (tmp_path / "rt_polarity.csv").write_text("text,label\nx,1\n")
    with pytest.raises(UsageError, match="does not match the checksum"):
        evaluate_run(str(run))


@pytest.mark.parametrize("value", ["../../../../../../etc", "/etc", "{tmp}/elsewhere", "{tmp}/source/../source"])
def test_manifest_cannot_point_bench_at_other_models(value, run, tmp_path, capsys, monkeypatch):
    from prunekit.api import reference_for

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "source", elsewhere)
    (elsewhere / "config.json").write_text((elsewhere / "config.json").read_text().replace("0.1", "0.2"))
    _set(run, lambda m: m.update(source_model=value.format(tmp=tmp_path)))
    if value.endswith("/source/../source"):  # the same folder, spelled another way: its fingerprint matches
        assert reference_for(str(run)) is not None
        return
    with pytest.raises(UsageError, match=r"pass --reference MODEL"):
        reference_for(str(run))
    monkeypatch.setattr(sys, "argv", ["prunekit", "bench", str(run), "--repeats", "1", "--no-memory"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "pass --reference MODEL" in err and len(err.strip().splitlines()) == 1


def test_catalog_names_in_manifests_are_names_not_paths(run, tmp_path, monkeypatch):
    """A folder in the working directory named like a catalog model is not what a manifest's name means."""
    from prunekit.api import _recorded_model
    from prunekit.runs.io import read_manifest

    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm-l6").mkdir()
    _set(run, lambda m: m.update(source_model="minilm-l6", source_fingerprint=None))
    assert _recorded_model(str(run), read_manifest(run)) == "minilm-l6"
