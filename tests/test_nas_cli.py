"""`prunekit search` and `prunekit extract` end to end through the CLI on the tiny BERT fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import prunekit
from prunekit.api import evaluate_run
from prunekit.bench import count_parameters
from prunekit.core.errors import UsageError
from prunekit.methods.nas.pareto import dominates, hypervolume, pareto_mask
from prunekit.report import run_row
from prunekit.runs.io import read_manifest
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
    from prunekit.pipelines.search import extract

    recipe = _recipe(tmp_path)
    out = tmp_path / "search"
    summary = json.loads(_cli("search", recipe, "--out", out, "--no-progress", "--json", "--extract", "0").stdout)
    pareto = json.loads((out / "pareto.json").read_text())
    assert summary["points"] == len(pareto["points"]) and summary["out_dir"] == str(out)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in logged if r["stage"] == "supernet" and r["type"] == "train"]
    assert trained and all(r["sub_random"] > 0 and r["sub_smallest"] > 0 for r in trained)  # sandwich + KD ran
    report = (out / "report.md").read_text()
    assert report.startswith("# prunekit search: search\n") and f"{pareto['hypervolume']:.4f}" in report
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
    for name, hv in pareto["baseline_hypervolume"].items():  # each family's points, and all of them together
        pts = [tuple(b["objectives"]) for b in pareto["baselines"] if name in ("all", b["name"])]
        assert hv == pytest.approx(hypervolume(pts, pareto["reference_point"]))
    assert {"finetune_s", "reorder_s", "supernet_s", "search_s", "baselines_s"} <= set(pareto["timings"])
    assert all(v > 0 for k, v in pareto["timings"].items() if k != "reorder_s")
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
        blocks = count_parameters(model)["blocks"]
        assert blocks == pytest.approx(point["block_params"] * pareto["dense"]["block_param_count"])
        evaluated = json.loads(_cli("evaluate", run, "--json").stdout)[0] if k else evaluate_run(str(run))
        assert evaluated["accuracy"] == pytest.approx(point["test"]["accuracy"])  # what the search measured
        # benchmarked and costed like a `prunekit prune` run, so `prunekit compare` sets it beside them
        assert manifest.metrics["dense"]["test"] == pareto["dense"]["test"]
        assert [p["batch"] for p in manifest.bench["latency"]] == [2] and manifest.bench["latency"][0]["speedup"] > 0
        cost = {x: pareto["timings"][x] for x in ("reorder_s", "supernet_s", "search_s")}
        assert manifest.timings == cost | {"train_s": pytest.approx(sum(cost.values()), abs=0.01)}
        row = run_row(run)
        assert row["dense_value"] == pareto["dense"]["test"]["accuracy"] and row["speedup_b1"] is None
        assert row["train_s"] == manifest.timings["train_s"] and row["delta"] is not None
    run = out / "point-0"  # the other commands read it too (the smallest point: zero-width layers included)
    args = ("--batch", "2", "--seq", "16", "--repeats", "1", "--warmup", "0", "--no-memory", "--json")
    assert json.loads(_cli("bench", run, *args).stdout)["latency"][0]["speedup"] > 0
    assert "max |onnxruntime - torch|" in _cli("export", run).stdout

    with pytest.raises(UsageError, match=f"point 99 is not on the front: '{out}' has points 0..{last}"):
        extract(out, 99, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


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


def test_latency_objective_is_measured_on_the_compacted_candidate_once_and_a_supernet_is_reused(tmp_path, monkeypatch):
    """In process, with the clock replaced by the candidate's parameter count: the latency objective must be
    measured on the compacted sub-network, once per configuration; a second search reuses the first one's
    super-network (stage 1 skipped) through a shared optuna study."""
    import torch

    from prunekit.pipelines import search as search_pipeline
    from prunekit.pipelines.search import extract, run_search
    from prunekit.recipe import load_recipe

    calls = []

    def fake_latency(model, **kwargs):
        calls.append(count_parameters(model)["total"])
        return {"median_ms": float(calls[-1])}

    monkeypatch.setattr(search_pipeline, "measure_latency", fake_latency)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = ["search.objective=latency", "search.baselines=[layers]", "train.max_steps=2", "search.budget=6"]
        first = tmp_path / "first"
        run_search(load_recipe(_recipe(tmp_path), overrides), first, progress=False, log=lambda *_: None)
        pareto = json.loads((first / "pareto.json").read_text())
        evals = [json.loads(x) for x in (first / "evaluations.jsonl").read_text().splitlines()]
        # dense + 6 candidates + 1 baseline, each timed once; every cost is its compacted model's size
        assert len(calls) == 1 + 6 + 1 and pareto["dense"]["cost"] == calls[0]
        assert sorted(e["cost"] for e in evals) == sorted(calls[1:7]) and len(set(calls[1:7])) > 1
        assert pareto["baselines"][0]["cost"] == calls[-1]

        url = f"sqlite:///{tmp_path / 'study.db'}"
        reuse = [f"search.supernet={first}", "search.searcher=nsga2", f"search.storage={url}", "search.study_name=s",
                 "search.objective=params", "search.baselines=[]", "search.budget=4", "finetune.epochs=0"]  # fmt: skip
        second = tmp_path / "second"
        run_search(load_recipe(_recipe(tmp_path), reuse), second, progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(old)
    again = [json.loads(x) for x in (second / "evaluations.jsonl").read_text().splitlines()]
    full = pareto["space"]["highs"]
    before = next(e for e in evals if e["config"] == full)
    after = next(e for e in again if e["config"] == full)
    assert after["validation"] == before["validation"]  # the same trained super-network
    assert not (second / "supernet").exists()  # stage 1 skipped: the first search's super-network is used
    extracted = extract(second, 0, tmp_path / "point", finetune_epochs=1, progress=False)
    manifest = read_manifest(extracted["out_dir"])
    assert manifest.extract["finetune_epochs"] == 1 and manifest.history  # fine-tuned further, evaluated
    assert [e.heads for e in manifest.structure] == json.loads((second / "pareto.json").read_text())["points"][0][
        "structure"
    ]["heads"]
