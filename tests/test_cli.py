"""The command line: one clear line and a non-zero exit on bad input, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import prunekit
from tiny import tiny_model


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A plain HF folder of a tiny model (with no tokenizer: the CLI must not need one to compact)."""
    path = tmp_path_factory.mktemp("m") / "tiny-bert"
    tiny_model("bert").save_pretrained(path)
    return path


def test_compact_with_magnitude_writes_a_loadable_run(tiny_dir, tmp_path):
    out = tmp_path / "run"
    r = run("compact", str(tiny_dir), str(out), "-p", "heads=0.5", "-p", "neurons=0.5", "--scope", "layer")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "prunekit.json").read_text())
    assert [e["heads"] for e in manifest["structure"]] == [2, 2, 2]
    assert [e["ffn_width"] for e in manifest["structure"]] == [24, 24, 24]
    assert prunekit.load(out).config.intermediate_size == 24


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["compact", "no-such-model", "OUT", "-p", "heads=0.5"], "unknown model 'no-such-model'", 2),
        (["compact", "TINY", "OUT", "-p", "heads=1.5"], "outside [0, 1)", 2),
        (["compact", "TINY", "OUT", "-p", "3:2"], "invalid N:M pattern", 2),
        (["compact", "TINY", "OUT", "-p", "hexagon=0.5"], "unknown sparsity pattern", 2),
        (["compact", "TINY", "OUT", "-p", "heads"], "give the fraction to remove", 2),
        (["compact", "TINY", "OUT", "-p", "5x5=0.5"], "does not divide", 2),
        (["compact", "TINY", "OUT", "-p", "2:4=0.5"], "fixes its own sparsity", 2),
        (["compact", "TINY", "OUT", "--scope", "world", "-p", "heads=0.5"], "--scope", 2),
        (["bench", "NOWHERE"], "does not exist", 2),
        (["export", "NOWHERE", "--format", "tflite"], "unknown export format", 2),
    ],
)
def test_bad_input_is_one_clear_line(args, message, code, tiny_dir, tmp_path):
    args = [
        a.replace("TINY", str(tiny_dir))
        .replace("OUT", str(tmp_path / "out"))
        .replace("NOWHERE", str(tmp_path / "nowhere"))
        for a in args
    ]
    r = run(*args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_existing_output_directory_is_refused(tiny_dir, tmp_path):
    (tmp_path / "out").mkdir()
    r = run("compact", str(tiny_dir), str(tmp_path / "out"), "-p", "heads=0.5")
    assert r.returncode == 2 and "exists" in r.stderr and "--overwrite" in r.stderr


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=8, patch_size=4
        )
    ).save_pretrained(tmp_path / "vit")
    r = run("compact", str(tmp_path / "vit"), str(tmp_path / "out"), "-p", "heads=0.5", "--head", "base")
    assert r.returncode == 2 and "unsupported architecture 'vit'" in r.stderr and "bert" in r.stderr


def test_models_lists_the_catalog():
    r = run("models", "--json")
    assert r.returncode == 0
    assert {m["name"] for m in json.loads(r.stdout)} == {"minilm-l6", "smollm2-135m", "mpnet-base"}
