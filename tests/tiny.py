"""Tiny random models of every supported family, for fast unit tests (never for results)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    MPNetConfig,
    RobertaConfig,
)

FAMILIES = ["bert", "roberta", "mpnet", "distilbert", "llama", "gpt2"]


def tiny_config(family: str):
    # large initial weights, so logits are O(1) and a wrong compaction cannot hide under the tolerance
    common = dict(vocab_size=97, attn_implementation="eager", initializer_range=0.3)
    if family == "bert":
        return BertConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
            num_labels=3,
            **common,
        )
    if family == "roberta":
        return RobertaConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=80,
            num_labels=3,
            pad_token_id=1,
            **common,
        )
    if family == "mpnet":
        return MPNetConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=80,
            num_labels=3,
            **common,
        )
    if family == "distilbert":
        return DistilBertConfig(
            dim=32, n_layers=3, n_heads=4, hidden_dim=48, max_position_embeddings=64, num_labels=3, **common
        )
    if family == "llama":
        return LlamaConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            head_dim=8,
            **common,
        )
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=3, n_head=4, n_inner=48, n_positions=64, **common)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, head: str = "auto"):
    torch.manual_seed(seed)
    cfg = tiny_config(family)
    if head == "base":
        model = AutoModel.from_config(cfg)
    elif family in ("llama", "gpt2"):
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        model = AutoModelForSequenceClassification.from_config(cfg)
    # random biases and norms, so a wrongly dropped bias or LayerNorm shows in the outputs
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tiny_inputs(family: str, batch: int = 2, seq: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}
