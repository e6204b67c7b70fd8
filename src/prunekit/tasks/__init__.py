"""NLP tasks: turning canonical data into training features, padding batches, and scoring models.

`get_task(kind)` gives a Task; `load_data` gives (DatasetDict, kind) for a named dataset or a user's file;
`evaluation_data` reads one user file whole for `prunekit evaluate --data FILE`.
"""

from __future__ import annotations

from typing import Any

from prunekit.core.errors import UsageError
from prunekit.tasks.base import IGNORE_INDEX, PadCollator, Task
from prunekit.tasks.classification import ClassificationTask
from prunekit.tasks.data import TASK_KINDS, evaluation_data, infer_task, load_data
from prunekit.tasks.lm import CausalLMTask
from prunekit.tasks.qa import ExtractiveQATask
from prunekit.tasks.summarization import DEFAULT_TEMPLATE, SummarizationTask

__all__ = [
    "DEFAULT_TEMPLATE",
    "IGNORE_INDEX",
    "TASK_KINDS",
    "CausalLMTask",
    "ClassificationTask",
    "ExtractiveQATask",
    "PadCollator",
    "SummarizationTask",
    "Task",
    "evaluation_data",
    "get_task",
    "infer_task",
    "load_data",
]

_FACTORIES: dict[str, tuple[type[Task], dict[str, Any]]] = {
    "classification": (ClassificationTask, {"pair": False}),
    "pair-classification": (ClassificationTask, {"pair": True}),
    "extractive-qa": (ExtractiveQATask, {}),
    "causal-lm": (CausalLMTask, {}),
    "summarization": (SummarizationTask, {}),
}
assert tuple(_FACTORIES) == TASK_KINDS


def get_task(kind: str, **options: Any) -> Task:
    """The Task for a kind, configured by its options (e.g. doc_stride for QA, template for summarization)."""
    if kind not in _FACTORIES:
        raise UsageError(f"unknown task '{kind}': use one of {', '.join(TASK_KINDS)}")
    cls, fixed = _FACTORIES[kind]
    unknown = sorted(set(options) - set(cls.option_names))
    if unknown:
        accepted = ", ".join(cls.option_names) or "none"
        raise UsageError(f"task '{kind}' has no option {', '.join(unknown)} (its options: {accepted})")
    return cls(**fixed, **options)
