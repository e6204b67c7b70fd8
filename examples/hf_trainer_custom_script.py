"""A plain Hugging Face `Trainer` fine-tuning script with a prunekit method added.

Only the lines marked `# prunekit` differ from an ordinary Trainer script: the method is created
from a name and a config, `Trainer(...)` becomes `PrunekitTrainer(..., method=method)`, and after
training `finalize_and_compact(trainer)` removes what the method pruned. Any registered method works
(`magnitude`, `movement`, `l1`, ...); its config is the method's recipe section, as JSON.

Quick check (about a minute on a laptop CPU):

    python examples/hf_trainer_custom_script.py --max-examples 64 --max-steps 8 --output-dir /tmp/hf-prune

A real run: drop --max-examples / --max-steps (3 epochs on rotten_tomatoes), e.g. with
`--method movement --method-config '{"pattern": "neuron", "sparsity": 0.5}'`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from transformers import DataCollatorWithPadding, TrainingArguments

from prunekit.catalog import load_model
from prunekit.catalog.datasets import load_task_data
from prunekit.integrations import PrunekitTrainer, finalize_and_compact  # prunekit
from prunekit.methods.base import create_method  # prunekit
from prunekit.runs import io  # prunekit: a run directory that prunekit.load(...) reads back
from prunekit.train.distill import DistillConfig  # prunekit (only with --teacher)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm-l6", help="catalog name, local folder or hub id")
    p.add_argument("--dataset", default="rotten_tomatoes", help="a classification dataset of the catalog")
    p.add_argument("--max-examples", type=int, default=None, help="cap each split (quick runs)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (quick runs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--method", default="magnitude", help="a prunekit method name (`prunekit prune --help` lists them)")
    p.add_argument("--method-config", default='{"pattern": "neuron", "sparsity": 0.5}', help="method config, JSON")
    p.add_argument("--teacher", default=None, help="a fine-tuned model (name or folder) to distill from")
    p.add_argument("--distill-config", default='{"alpha": 0.5, "temperature": 2.0}', help="DistillConfig, JSON")
    p.add_argument("--output-dir", default="hf-trainer-run")
    p.add_argument("--use-cpu", action="store_true", help="train on the CPU even where a GPU is present")
    return p.parse_args(argv)


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data = load_task_data(args.dataset, max_examples=args.max_examples)
    num_labels = data["train"].features["label"].num_classes
    model, tokenizer = load_model(args.model, task="sequence-classification", num_labels=num_labels)
    data = data.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
    )

    method = create_method(args.method, json.loads(args.method_config))  # prunekit
    teacher, distill = None, None
    if args.teacher:  # prunekit: optional distillation from a fine-tuned teacher
        teacher, _ = load_model(args.teacher, task="sequence-classification", num_labels=num_labels)
        distill = DistillConfig.model_validate_json(args.distill_config)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=0.06,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=10,
        report_to=[],
        use_cpu=args.use_cpu,
    )
    trainer = PrunekitTrainer(  # prunekit: was Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=accuracy,
        method=method,  # prunekit
        teacher=teacher,  # prunekit
        distill=distill,  # prunekit
    )
    trainer.train()

    params_before = sum(p.numel() for p in trainer.model.parameters())
    masked = trainer.evaluate(data["test"], metric_key_prefix="test")
    model = finalize_and_compact(trainer)  # prunekit: physically remove the pruned heads / neurons / rows
    compacted = trainer.evaluate(data["test"], metric_key_prefix="test")
    summary = {
        "method": args.method,
        "params_before": params_before,
        "params_after": sum(p.numel() for p in model.parameters()),
        "test_accuracy_masked": masked["test_accuracy"],
        "test_accuracy_compacted": compacted["test_accuracy"],
    }
    run_dir = Path(args.output_dir) / "model"
    io.save(  # prunekit: loads back with prunekit.load(run_dir), whatever the per-layer shapes
        model,
        run_dir,
        tokenizer,
        overwrite=True,
        source_model=args.model,
        method=args.method,
        recipe={"method": json.loads(args.method_config)},
        metrics=compacted,
    )
    print(json.dumps(summary | {"run_dir": str(run_dir)}, indent=2))
    return summary


if __name__ == "__main__":
    main()
