"""A tiny BERT that speaks the real MiniLM tokenizer, and a small learnable sentiment file: enough to train
in seconds and to exercise the real code paths (catalog loading, user data files, the trainer, the CLI)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

POSITIVE = ["good", "great", "fine", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible", "weak"]
FILLER = ["the", "film", "was", "plot", "actors", "story", "a", "really", "quite", "and", "music"]


def tiny_bert_dir(root: Path, seed: int = 0) -> Path:
    from prunekit.catalog import resolve_model

    out = root / "tiny-bert"
    if out.exists():
        return out
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def sentiment_csv(
    root: Path, n: int = 240, seed: int = 0, text_col: str = "review", label_col: str = "verdict"
) -> Path:
    rng = random.Random(seed)
    path = root / "sentiment.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([text_col, label_col])
        for i in range(n):
            positive = i % 2 == 0
            words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if positive else NEGATIVE)]
            rng.shuffle(words)
            w.writerow([" ".join(words), "pos" if positive else "neg"])
    return path


def tiny_llama_dir(root: Path) -> Path:
    """A tiny random Llama (GQA: 4 query heads, 2 key/value heads) with tiny_bert_dir's tokenizer, saved as a
    model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = root / "tiny-llama"
    if out.exists():
        return out
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir(root))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, head_dim=8,
                      pad_token_id=tok.pad_token_id)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def lm_jsonl(root: Path, n: int = 60) -> Path:
    """A language-model file of `n` short documents of repetitive text (a decoder learns it in a few steps)."""
    path = root / "lm.jsonl"
    path.write_text("\n".join(json.dumps({"text": "the cat sat on the mat and the dog sat on the log . " * 3})
                              for _ in range(n)))  # fmt: skip
    return path
