"""`prunekit search` and `prunekit extract` end to end through the CLI on the tiny BERT fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import prunekit
from prunekit.bench import count_parameters
from prunekit.io import read_manifest
from prunekit.nas.pareto import dominates, hypervolume, pareto_mask
from train_fixtures import sentiment_csv, tiny_bert_dir


def _recipe(tmp_path, extra: str = "") -> str:
    model_dir = tiny_bert_dir(tmp_path)
    csv_path = sentiment_csv(tmp_path)
    path = tmp_path / "nas.yaml"
    path.write_text(
        f"model: {model_dir}\n"
        f"data: {{dataset: {csv_path}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "finetune: {epochs: 3, batch_size: 16, lr: 1.0e-2, max_length: 16}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 0}\n"
        "method: {name: nas, space: medium, strategy: full, importance_examples: 64}\n"
        "bench: {batch: [2], seq: 16, repeats: 2, warmup: 1}\n"
        "search: {searcher: local, budget: 10, baseline_sizes: [0.5]}\n" + extra
    )
    return str(path)


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # tiny matrices: threads only contend
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_search_writes_the_pareto_set_and_extracts_points(tmp_path):
    recipe = _recipe(tmp_path)
    out = tmp_path / "search"
    summary = json.loads(_cli("search", recipe, "--out", out, "--no-progress", "--json", "--extract", "0").stdout)
    pareto = json.loads((out / "pareto.json").read_text())
    assert summary["points"] == len(pareto["points"]) and summary["out_dir"] == str(out)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / ".search.partial").exists() and not (out / "checkpoints").exists()

    # the front is the non-dominated set of every evaluation, and its hypervolume is the stated one
    evals = [json.loads(x) for x in (out / "evaluations.jsonl").read_text().splitlines()]
    assert len(evals) == pareto["evaluations"] == 10 and len({tuple(e["config"]) for e in evals}) == 10
    front = [tuple(p["objectives"]) for p in pareto["points"]]
    everything = [tuple(e["objectives"]) for e in evals]
    assert pareto_mask(front).all() and sorted(front) == sorted(
        o for o, m in zip(everything, pareto_mask(everything), strict=True) if m
    )
    assert not any(dominates(o, f) for o in everything for f in front)
    assert pareto["hypervolume"] == pytest.approx(hypervolume(front, pareto["reference_point"]))
    assert pareto["reference_point"] == [1.0, 1.0] and pareto["objectives"][0] == "1 - validation accuracy"
    dense_params = pareto["dense"]["cost"]
    for p in pareto["points"]:
        assert p["objectives"][0] == pytest.approx(1 - p["validation"]["accuracy"])
        assert p["objectives"][1] == pytest.approx(p["cost"] / dense_params) and "accuracy" in p["test"]
    assert {b["name"] for b in pareto["baselines"]} == {"heads", "layers", "magnitude"}
    # the initial design: the full network costs exactly the dense model
    assert any(e["config"] == pareto["space"]["highs"] and e["objectives"][1] == 1.0 for e in evals)

    # --extract 0 during the search, `prunekit extract` afterwards: plain run directories of the searched networks
    last = len(pareto["points"]) - 1
    _cli("extract", out, last, tmp_path / "last")
    for k, run in ((0, out / "point-0"), (last, tmp_path / "last")):
        point = pareto["points"][k]
        model = prunekit.load(run)
        manifest = read_manifest(run)
        assert manifest.method == "nas" and manifest.extract["point"] == k
        kept = [e.heads if e.attention != "dropped" else 0 for e in manifest.structure]
        assert kept == point["structure"]["heads"]
        assert count_parameters(model)["total"] == point["cost"]  # objective params: the compacted model's count
        evaluated = json.loads(_cli("evaluate", run, "--json").stdout)[0]
        assert evaluated["accuracy"] == pytest.approx(point["test"]["accuracy"])  # what the search measured

    proc = _cli("extract", out, "99", tmp_path / "bad", check=False)
    assert proc.returncode == 2 and "not on the front" in proc.stderr and not (tmp_path / "bad").exists()


def test_search_refuses_bad_input_before_training(tmp_path):
    recipe = _recipe(tmp_path)
    for override, message in (
        ("search.searcher=grid", "unknown searcher 'grid'"),
        ("search.objective=energy", "unknown objective 'energy'"),
        ("method.space=huge", "unknown search space 'huge'"),
        ("method={name: dense}", "prunekit search needs method.name 'nas'"),
    ):
        proc = _cli("search", recipe, "--out", tmp_path / "x", "--set", override, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
