"""prunekit methods inside a plain `transformers.Trainer` script (tiny BERT, synthetic data, CPU)."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from prunekit.compact.remove import check_equal
from prunekit.core.errors import UsageError
from prunekit.integrations import PrunekitCallback, PrunekitTrainer, finalize_and_compact
from prunekit.integrations.hf_trainer import METHOD_STATE_FILE
from prunekit.masks import MaskSet
from prunekit.methods.base import Method
from prunekit.topology import get_module
from tiny import tiny_inputs, tiny_model


class HalfNeurons(Method):
    """Test-only: masks every other FFN neuron of each layer; records the hooks the trainer called."""

    name = "test-half-neurons"

    def attach(self, model: nn.Module, topo) -> None:
        super().attach(model, topo)
        self._masks = MaskSet()
        for b in topo.blocks:
            self._masks.layer(b.index).neurons = torch.arange(b.ffn.width) % 2 == 0
        self.steps: list[tuple[int, int]] = []
        self.epochs: list[int] = []
        self.loaded: dict | None = None

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        self.steps.append((step, total_steps))
        return {"kept_neurons": 0.5}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.epochs.append(epoch)
        return {}

    def masks(self) -> MaskSet:
        return self._masks

    def state_dict(self) -> dict:
        return {"steps": len(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


class HalfNeuronsL1(HalfNeurons):
    """Test-only: adds an L1 loss term and a parameter of its own, trained in its own optimizer group."""

    name = "test-half-neurons-l1"

    def attach(self, model: nn.Module, topo) -> None:
        super().attach(model, topo)
        self.scale = nn.Parameter(torch.ones((), device=next(model.parameters()).device))

    def parameter_groups(self) -> list[dict]:
        return [{"params": [self.scale], "lr": 0.05}]

    def loss_terms(self, model: nn.Module, batch: dict, outputs) -> dict[str, torch.Tensor]:
        l1 = sum(get_module(model, b.ffn.inputs[0]).weight.abs().mean() for b in self.topo.blocks)
        return {"l1": 1e-3 * l1, "scale": (self.scale - 2) ** 2}


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, seq: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, 97, (n, seq), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        num_train_epochs=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        logging_steps=2,
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**(base | kw))


def _masked_zero(model: nn.Module, method: HalfNeurons) -> bool:
    for b in method.topo.blocks:
        drop = ~method.masks().layers[b.index].neurons
        w_in = get_module(model, b.ffn.inputs[0])
        w_out = get_module(model, b.ffn.output)
        if w_in.weight[drop].any() or w_in.bias[drop].any() or w_out.weight[:, drop].any():
            return False
    return True


def test_trainer_trains_logs_masks_and_compacts(tmp_path):
    model = tiny_model("bert")
    start = copy.deepcopy(model.state_dict())
    method = HalfNeuronsL1()
    trainer = PrunekitTrainer(
        model=model,
        args=_args(tmp_path, eval_strategy="epoch"),
        train_dataset=Synthetic(),
        eval_dataset=Synthetic(8, seed=1),
        method=method,
    )
    trainer.train()

    logs = trainer.state.log_history
    train_lines = [r for r in logs if "loss" in r]
    assert train_lines and all("loss_l1" in r and "loss_scale" in r and "kept_neurons" in r for r in train_lines)
    assert all("loss_l1" not in r for r in logs if "eval_loss" in r)
    assert [s for s, _ in method.steps] == list(range(1, 9)) and method.steps[0][1] == 8
    assert method.epochs == [0, 1]

    # the method's group reached the optimizer, with its own lr and no decay, and its parameter trained
    groups = [g for g in trainer.optimizer.param_groups if any(p is method.scale for p in g["params"])]
    assert len(groups) == 1 and groups[0]["initial_lr"] == 0.05 and groups[0]["weight_decay"] == 0.0
    assert method.scale.item() > 1.05

    # AdamW with weight decay moved everything else, but masked weights are exactly zero
    assert _masked_zero(trainer.model, method)
    kept = method.masks().layers[0].neurons
    w = trainer.model.bert.encoder.layer[0].intermediate.dense.weight
    assert not torch.equal(w[kept], start["bert.encoder.layer.0.intermediate.dense.weight"][kept])

    masked = copy.deepcopy(trainer.model).eval()
    check_equal(masked, method.masks(), tiny_inputs("bert"))
    before = sum(p.numel() for p in masked.parameters())
    compacted = finalize_and_compact(trainer).eval()
    assert compacted is trainer.model
    assert sum(p.numel() for p in compacted.parameters()) < before
    assert compacted.bert.encoder.layer[0].intermediate.dense.weight.shape[0] == 24
    with torch.no_grad():
        inputs = tiny_inputs("bert")
        torch.testing.assert_close(compacted(**inputs).logits, masked(**inputs).logits, atol=1e-5, rtol=1e-5)
    assert trainer.evaluate()["eval_loss"] > 0  # the compacted model still runs in the trainer


def test_trainer_distills_from_a_teacher(tmp_path):
    method = HalfNeurons()
    trainer = PrunekitTrainer(
        model=tiny_model("bert", seed=0),
        args=_args(tmp_path, max_steps=2, logging_steps=1),
        train_dataset=Synthetic(),
        method=method,
        teacher=tiny_model("bert", seed=1),
        distill={"alpha": 0.9, "hidden_weight": 1.0, "attention_weight": 1.0},
    )
    trainer.train()
    line = next(r for r in trainer.state.log_history if "loss" in r)
    for key in ("loss_task", "loss_kd_logits", "loss_kd_hidden", "loss_kd_attention"):
        assert line[key] > 0
    assert all(p.grad is None for p in trainer.teacher.parameters())
    with pytest.raises(UsageError, match="teacher"):
        PrunekitTrainer(model=tiny_model("bert"), args=_args(tmp_path), method=HalfNeurons(), distill={"alpha": 0.5})


def test_callback_alone_in_a_plain_trainer(tmp_path):
    method = HalfNeurons()
    trainer = Trainer(
        model=tiny_model("bert"),
        args=_args(tmp_path, max_steps=3, logging_steps=1),
        train_dataset=Synthetic(),
        callbacks=[PrunekitCallback(method)],
    )
    assert method.model is trainer.model  # attached before the optimizer exists
    trainer.train()
    assert _masked_zero(trainer.model, method)
    assert all("kept_neurons" in r for r in trainer.state.log_history if "loss" in r)
    assert finalize_and_compact(trainer).bert.encoder.layer[1].output.dense.weight.shape[1] == 24

    plain = Trainer(
        model=tiny_model("bert"),
        args=_args(tmp_path, max_steps=1),
        train_dataset=Synthetic(),
        callbacks=[PrunekitCallback(HalfNeuronsL1())],
    )
    with pytest.raises(UsageError, match="PrunekitTrainer"):
        plain.train()


def test_method_state_is_checkpointed_and_resumed(tmp_path):
    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    first = HalfNeurons()
    PrunekitTrainer(model=tiny_model("bert"), args=args, train_dataset=Synthetic(), method=first).train()
    ckpt = os.path.join(args.output_dir, "checkpoint-2")
    assert os.path.isfile(os.path.join(ckpt, METHOD_STATE_FILE))

    second = HalfNeurons()
    more = _args(tmp_path, max_steps=3, save_strategy="no")
    trainer = PrunekitTrainer(model=tiny_model("bert"), args=more, train_dataset=Synthetic(), method=second)
    trainer.train(resume_from_checkpoint=True)
    assert second.loaded == {"steps": 2}
    assert [s for s, _ in second.steps] == [3]


@pytest.mark.slow
def test_example_script_runs_on_minilm(tmp_path):
    """The documented example, on a few examples and steps (MiniLM-L6, rotten_tomatoes)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer_custom_script.py"
    spec = importlib.util.spec_from_file_location("hf_trainer_custom_script", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    summary = example.main(
        ["--max-examples", "16", "--max-steps", "2", "--batch-size", "8", "--output-dir", str(tmp_path), "--use-cpu"]
    )
    assert summary["params_after"] < summary["params_before"]
    assert summary["test_accuracy_masked"] == summary["test_accuracy_compacted"]


def test_a_user_optimizer_without_the_method_parameters_is_refused(tmp_path):
    model = tiny_model("bert")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = PrunekitTrainer(
        model=model,
        args=_args(tmp_path, max_steps=1),
        train_dataset=Synthetic(),
        optimizers=(optimizer, None),
        method=HalfNeuronsL1(),
    )
    with pytest.raises(UsageError, match="parameter_groups"):
        trainer.train()


def test_a_one_shot_method_is_refused_with_the_command_that_runs_it(tmp_path):
    from prunekit.methods.base import create_method

    with pytest.raises(UsageError, match="prunekit prune"):
        PrunekitTrainer(model=tiny_model("bert"), args=_args(tmp_path), train_dataset=Synthetic(),
                        method=create_method("structured"))  # fmt: skip
