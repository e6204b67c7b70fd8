"""A recipe end to end through the CLI on a tiny model: fine-tune, prune, compact, evaluate, save, report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import prunekit
from prunekit.runs.io import read_manifest
from train_fixtures import sentiment_csv, tiny_bert_dir


def _recipe(tmp_path, method: str, extra: str = "") -> str:
    model_dir = tiny_bert_dir(tmp_path)
    csv_path = sentiment_csv(tmp_path)
    path = tmp_path / f"{method.split(',')[0]}.yaml"
    path.write_text(
        f"model: {model_dir}\n"
        f"data: {{dataset: {csv_path}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "finetune: {epochs: 4, batch_size: 16, lr: 1.0e-2, max_length: 16, checkpoint_every: 5}\n"
        "train: {epochs: 3, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 5}\n"
        f"method: {{name: {method}}}\n"
        "bench: {batch: [2], seq: 16, repeats: 2, warmup: 1}\n" + extra
    )
    return str(path)


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_prune_recipe_end_to_end(tmp_path):
    recipe = _recipe(tmp_path, "magnitude, pattern: [head, neuron], sparsity: 0.5, scope: layer",
                     "distill: {teacher: dense, alpha: 0.5}\n")  # fmt: skip
    out = tmp_path / "run"
    summary = json.loads(_cli("prune", recipe, "--out", str(out), "--no-progress", "--json").stdout)
    manifest = read_manifest(out)
    assert manifest.method == "magnitude" and manifest.recipe["method"]["sparsity"] == 0.5
    assert [e.heads for e in manifest.structure] == [2, 2] and [e.ffn_width for e in manifest.structure] == [32, 32]
    assert manifest.metrics["dense"]["test"]["accuracy"] >= 0.75
    assert manifest.metrics["test"]["accuracy"] == summary["metrics"]["test"]["accuracy"]
    assert summary["bench"]["latency"][0]["speedup"] > 0
    for name in ("model.safetensors", "report.md", "metrics.jsonl", "dense/model.safetensors"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists() and not (tmp_path / ".run.partial").exists()
    stages = {json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"finetune", "prune"}
    # the saved model is the compacted one and evaluates to the recorded metric, from its own recorded split
    evaluated = json.loads(_cli("evaluate", str(out), "--json").stdout)[0]
    assert evaluated["accuracy"] == pytest.approx(manifest.metrics["test"]["accuracy"])
    # and on a user file with the training column names
    csv2 = sentiment_csv(tmp_path / "..", n=40, seed=7)
    on_file = json.loads(_cli("evaluate", str(out), "--data", str(csv2), "--json").stdout)[0]
    assert on_file["examples"] == 40 and on_file["accuracy"] >= 0.6
    # a run compacted further from it keeps its task and split: evaluate scores it on the same held-out data
    further = tmp_path / "further"
    _cli("compact", str(out), str(further), "-p", "unstructured=0.3")
    assert read_manifest(further).split == manifest.split
    again = json.loads(_cli("evaluate", str(further), "--json").stdout)[0]
    assert again["examples"] == evaluated["examples"] and 0 <= again["accuracy"] <= 1
    report = (out / "report.md").read_text()
    assert report.startswith("# prunekit report: run\n")  # its final name, not the staging folder's
    assert "magnitude" in report and f"{manifest.metrics['test']['accuracy']:.4f}"[:4] in report


def test_nm_run_is_saved_packed_and_every_command_reads_it(tmp_path):
    recipe = _recipe(tmp_path, "asp, pattern: '2:4'")
    out = tmp_path / "run"
    _cli("prune", recipe, "--out", str(out), "--no-progress", "--set", "bench.enabled=false")
    manifest = read_manifest(out)
    assert manifest.weights_format == "nm" and set(manifest.patterns.values()) == {"2:4"}
    assert (out / "model.nm.safetensors").exists() and not (out / "model.safetensors").exists()
    assert (out / "model.nm.safetensors").stat().st_size < (out / "dense" / "model.safetensors").stat().st_size
    evaluated = json.loads(_cli("evaluate", str(out), "--json").stdout)[0]
    assert evaluated["accuracy"] == pytest.approx(manifest.metrics["test"]["accuracy"])
    assert "max |onnxruntime - torch|" in _cli("export", str(out)).stdout
    dense_copy = tmp_path / "plain"
    _cli("compact", str(out), str(dense_copy), "--storage", "dense")  # back to a plain transformers folder
    assert read_manifest(dense_copy).weights_format == "dense" and (dense_copy / "model.safetensors").exists()
    a, b = prunekit.load(out), prunekit.load(dense_copy)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k


def test_existing_output_and_bad_resume_are_refused(tmp_path):
    recipe = _recipe(tmp_path, "dense")
    out = tmp_path / "run"
    out.mkdir()
    proc = _cli("prune", recipe, "--out", str(out), check=False)
    assert proc.returncode == 2 and "exists" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("prune", recipe, "--out", str(tmp_path / "other"), "--resume", check=False)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr
    assert not (tmp_path / "other").exists()


def test_killed_pipeline_resumes_to_the_same_model(tmp_path):
    from prunekit.pipelines.prune import partial_dir, run_recipe
    from prunekit.recipe import load_recipe
    from prunekit.train import loop

    recipe = load_recipe(_recipe(tmp_path, "magnitude, pattern: neuron, sparsity: 0.5"), ["bench.enabled=false"])
    run_recipe(recipe, tmp_path / "a", progress=False, log=lambda *_: None)

    real_fit = loop.Trainer.fit

    def killed_fit(self, *, resume=False, stop_after=None):
        if self.stage == "prune" and not resume:
            real_fit(self, resume=resume, stop_after=8)
            raise KeyboardInterrupt  # the process dies mid-training
        return real_fit(self, resume=resume, stop_after=stop_after)

    loop.Trainer.fit = killed_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe, tmp_path / "b", progress=False, log=lambda *_: None)
        assert partial_dir(tmp_path / "b").exists() and not (tmp_path / "b").exists()
        run_recipe(recipe, tmp_path / "b", resume=True, progress=False, log=lambda *_: None)
    finally:
        loop.Trainer.fit = real_fit
    a, b = prunekit.load(tmp_path / "a"), prunekit.load(tmp_path / "b")
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.slow
def test_demo_command_on_real_minilm(tmp_path):
    """The README's demo path on the real model and data, with a small budget (the full demo is `make demo`)."""
    out = tmp_path / "demo"
    budget = ["data.max_examples=400", "data.max_train_examples=160", "finetune.epochs=1", "train.epochs=1",
              "bench.repeats=2", "bench.batch=[1]"]  # fmt: skip
    proc = _cli("demo", "--out", str(out), "--no-progress", *[x for b in budget for x in ("--set", b)])
    assert "test accuracy" in proc.stdout and "latency b1 s128" in proc.stdout, proc.stdout
    manifest = read_manifest(out)
    assert manifest.source_model == "minilm-l6" and manifest.task["dataset"] == "rotten_tomatoes"
    assert [e.heads for e in manifest.structure] == [6] * 6 and [e.ffn_width for e in manifest.structure] == [768] * 6
    assert manifest.split["sizes"] == {"train": 160, "validation": 400, "test": 400}
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert size(prunekit.load(out)) < size(prunekit.load(out / "dense"))


def test_a_new_task_head_starts_from_the_recipe_seed(tmp_path):
    """A head the checkpoint lacks (here QA on a classifier folder) must not depend on the RNG state at load time:
    it did, so the same recipe started from a different head in every process and dense runs did not reproduce.
    The caller's RNG stream is left as it was."""
    from prunekit.api import load_source

    folder = str(tiny_bert_dir(tmp_path))

    def head(seed: int) -> torch.Tensor:
        model, _, _ = load_source(folder, task_head="question-answering", seed=seed)
        return model.qa_outputs.weight.detach().clone()

    torch.manual_seed(1)
    first = head(0)
    torch.randn(1000)  # whatever else ran in the process
    assert torch.equal(first, head(0))
    assert not torch.equal(first, head(1))
    torch.manual_seed(5)
    head(0)
    after_load = torch.randn(3)
    torch.manual_seed(5)
    assert torch.equal(after_load, torch.randn(3))
