"""Task metrics, computed only with scikit-learn and rouge-score so that every number works offline.

Scales follow each metric's usual reporting: accuracy, macro F1 and MCC in [0, 1] (MCC in [-1, 1]);
SQuAD exact match / F1 and ROUGE in [0, 100].
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence


def classification_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, macro-averaged F1 and Matthews correlation of class predictions."""
    # lazy: scikit-learn takes ~1.5 s to import, used once per split / evaluation
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if len(predictions) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "mcc": float("nan")}
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(labels, predictions)),
    }


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token-overlap F1 of one prediction against one gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 (x100), each the max over an example's gold answers, as the official script."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} examples")
    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan")}
    em = f1 = 0.0
    for pred, answers in zip(predictions, golds, strict=True):
        answers = list(answers) or [""]
        em += max(exact_match(pred, a) for a in answers)
        f1 += max(token_f1(pred, a) for a in answers)
    return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp of the token-weighted mean negative log-likelihood (not a mean of per-batch means)."""
    if total_tokens <= 0:
        return float("nan")
    mean = total_nll / total_tokens
    return math.exp(mean) if mean < 700 else float("inf")


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (x100, Porter stemming); with several references, the best one per type."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} examples")
    if not predictions:
        return {k: float("nan") for k in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        scores = scorer.score_multi(list(refs) or [""], pred)
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    return {k: 100 * v / len(predictions) for k, v in totals.items()}
