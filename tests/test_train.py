"""The trainer: it learns, a resumed run equals an uninterrupted one, and it runs under `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from prunekit.catalog import load_model
from prunekit.tasks import get_task, load_data
from prunekit.train.config import TrainConfig
from prunekit.train.loop import Trainer, process_batches, train
from train_fixtures import lm_jsonl, sentiment_csv, tiny_bert_dir, tiny_llama_dir

COLUMNS = {"text": "review", "label": "verdict"}


@pytest.fixture()
def setup(tmp_path):
    model_dir = tiny_bert_dir(tmp_path)
    data, kind = load_data(str(sentiment_csv(tmp_path)), task="classification", columns=COLUMNS, seed=0)
    return model_dir, data, get_task(kind)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, max_length=16, checkpoint_every=5, log_every=1, warmup_ratio=0.1)
    return TrainConfig(**(base | kw))


def _records(work, kind):
    return [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines() if json.loads(x)["type"] == kind]


def test_trainer_learns(setup, tmp_path):
    model_dir, data, task = setup
    model, tok = load_model(str(model_dir), num_labels=2)
    before = task.evaluate(model, data["validation"], tok, max_length=16)["accuracy"]
    res = train(model, tok, task, data, config=_cfg(epochs=6), work_dir=tmp_path / "w", progress=False)
    losses = [r["loss"] for r in _records(tmp_path / "w", "train")]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    after = task.evaluate(res.model, data["validation"], tok, max_length=16)["accuracy"]
    assert after >= 0.9 > before or after > before + 0.3, (before, after)
    assert res.best is not None and res.best["accuracy"] == max(r["accuracy"] for r in res.history)


def test_batches_cover_the_data_once_per_epoch():
    cfg = TrainConfig(batch_size=4, seed=3)
    seen = sorted(i for b in process_batches(22, cfg, epoch=1, rank=0, world=1) for i in b)
    assert seen == list(range(22))
    a = process_batches(22, cfg, 1, 0, 2)
    b = process_batches(22, cfg, 1, 1, 2)
    assert len(a) == len(b) and not {i for x in a for i in x} & {i for x in b for i in x}
    assert process_batches(22, cfg, 1, 0, 1) != process_batches(22, cfg, 2, 0, 1)  # reshuffled each epoch


@pytest.mark.parametrize("stop_after", [7, 10, 13])
def test_resumed_run_equals_uninterrupted(setup, tmp_path, stop_after):
    model_dir, data, task = setup
    cfg = _cfg(epochs=2, grad_accum=2)

    def fresh(work):
        model, tok = load_model(str(model_dir), num_labels=2)
        return Trainer(model, tok, task, data, config=cfg, work_dir=work, progress=False)

    full = fresh(tmp_path / "a").fit()
    fresh(tmp_path / "b").fit(stop_after=stop_after)  # "killed" here; the last checkpoint is at or before it
    resumed = fresh(tmp_path / "b").fit(resume=True)
    for (k, v), (k2, v2) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert _records(tmp_path / "a", "eval") == _records(tmp_path / "b", "eval")
    assert _records(tmp_path / "a", "train") == _records(tmp_path / "b", "train")


def test_corrupt_latest_checkpoint_falls_back(setup, tmp_path):
    model_dir, data, task = setup
    cfg = _cfg(epochs=2)
    model, tok = load_model(str(model_dir), num_labels=2)
    full = Trainer(model, tok, task, data, config=cfg, work_dir=tmp_path / "a", progress=False).fit()
    model, tok = load_model(str(model_dir), num_labels=2)
    Trainer(model, tok, task, data, config=cfg, work_dir=tmp_path / "b", progress=False).fit(stop_after=12)
    ckpts = sorted((tmp_path / "b" / "checkpoints" / "train").iterdir())
    assert len(ckpts) == 2
    with open(ckpts[-1] / "model.safetensors", "r+b") as fh:  # flip bytes in the newest checkpoint
        fh.seek(200)
        fh.write(b"\x00garbage\x00")
    model, tok = load_model(str(model_dir), num_labels=2)
    with pytest.warns(UserWarning, match="falling back"):
        resumed = Trainer(model, tok, task, data, config=cfg, work_dir=tmp_path / "b", progress=False).fit(resume=True)
    for v, v2 in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(v, v2)


def test_two_processes_under_accelerate_launch(tmp_path):
    model_dir = tiny_bert_dir(tmp_path)
    csv_path = sentiment_csv(tmp_path, n=160)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {model_dir}\n"
        f"data: {{dataset: {csv_path}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "train: {epochs: 6, batch_size: 8, lr: 1.0e-2, max_length: 16, checkpoint_every: 0}\n"
        "method: {name: dense}\nbench: {enabled: false}\n"
    )
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # on a CPU-only machine accelerate's torchrun launcher (--multi_gpu) starts gloo processes (MULTI_CPU);
    # its --cpu flag with several processes would need mpirun
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "prunekit.cli", "prune", str(recipe), "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "prunekit.json").read_text())
    assert manifest["metrics"]["test"]["accuracy"] >= 0.75  # learned, with gradients averaged across processes
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    # 160 examples -> 128 train; 8 per batch -> 16 batches -> 8 per process and epoch -> 48 steps in 6 epochs
    assert max(steps) == 48


def test_trainer_on_language_modelling_and_qa(tmp_path):
    """The same loop trains the other task kinds: a decoder on text, an encoder on extractive QA."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    bert_dir = tiny_bert_dir(tmp_path)
    lm_file = lm_jsonl(tmp_path)
    data, kind = load_data(str(lm_file), seed=0)
    assert kind == "causal-lm"
    task = get_task(kind)
    model, tok = load_model(str(tiny_llama_dir(tmp_path)), task="causal-lm")
    before = task.evaluate(model, data["validation"], tok, max_length=32)["perplexity"]
    cfg = _cfg(epochs=10, lr=1e-2, max_length=32)
    res = train(model, tok, task, data, config=cfg, work_dir=tmp_path / "lm", progress=False)
    after = task.evaluate(res.model, data["validation"], tok, max_length=32)["perplexity"]
    assert after < before / 5, (before, after)

    qa = []
    for i in range(80):
        name = ["paris", "rome", "oslo", "lima"][i % 4]
        context = f"the city in question is {name} and it is large ."
        qa.append({"question": "which city ?", "context": context,
                   "answers": {"text": [name], "answer_start": [context.index(name)]}})  # fmt: skip
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("\n".join(json.dumps(x) for x in qa))
    data, kind = load_data(str(qa_file), seed=0)
    assert kind == "extractive-qa"
    task = get_task(kind)
    tok = AutoTokenizer.from_pretrained(bert_dir)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64))  # fmt: skip
    res = train(model, tok, task, data, config=_cfg(epochs=6, max_length=64), work_dir=tmp_path / "qa", progress=False)
    assert task.evaluate(res.model, data["test"], tok, max_length=64)["exact_match"] >= 90
