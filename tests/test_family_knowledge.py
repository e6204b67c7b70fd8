"""Family knowledge lives in topology/ only: no other module names a model family or a model-specific attribute.

Each family entry in `prunekit.topology.families` declares its config keys, class prefixes, position numbering,
embedding names and hooks; the rest of the package asks through topology's functions. This scans the code (not
docstrings or comments) of every module outside topology/ and catalog/ (the catalog names models by design).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"
EXEMPT = ("topology", "catalog")

# family and model-type names (lowercase, as configs spell them)
FAMILY_NAMES = {
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "electra", "mpnet", "distilbert",
    "llama", "mistral", "qwen2", "smollm3", "gpt2", "longformer", "data2vec-text", "ibert", "roberta-prelayernorm",
    "luke", "markuplm", "xmod",
}  # fmt: skip
# config fields and module attributes only some families have
FAMILY_ATTRIBUTES = {
    "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_key_value_groups", "n_inner",
    "hidden_dim", "n_heads", "n_head", "n_layer", "n_layers", "n_positions", "n_embd", "relative_attention_bias",
    "wte", "wpe", "embed_tokens", "attention_head_size", "all_head_size", "split_size", "kept_heads",
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "self_attn",
    "c_attn", "c_proj", "c_fc", "q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2",
}  # fmt: skip
# model class names: a family's class prefix followed by the rest of a class name
CLASS_PREFIXES = ("Bert", "Roberta", "XLMRoberta", "Camembert", "Electra", "MPNet", "DistilBert", "Llama",
                  "Mistral", "Qwen2", "GPT2")  # fmt: skip
_CLASS = re.compile(rf"^(?:{'|'.join(CLASS_PREFIXES)})(?:[A-Z_]|$)")
_DOTTED = re.compile(r"^[\w.-]+$")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _bad_identifier(name: str) -> bool:
    return name in FAMILY_ATTRIBUTES or bool(_CLASS.match(name))


def _bad_string(text: str) -> bool:
    if not _DOTTED.match(text):  # prose (a message, an f-string part): not a name
        return False
    return text in FAMILY_NAMES or any(_bad_identifier(seg) for seg in text.split("."))


def findings(source: str, where: str = "<string>") -> list[str]:
    """`where:line: what` for each family name or model-specific attribute the code names."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        named = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            named = node.value if _bad_string(node.value) else None
        elif isinstance(node, ast.Attribute):
            named = node.attr if _bad_identifier(node.attr) else None
        elif isinstance(node, ast.Name):  # a local variable may be called n_layers; a model class may not be used
            named = node.id if _CLASS.match(node.id) else None
        elif isinstance(node, ast.keyword) and node.arg is not None:
            named = node.arg if _bad_identifier(node.arg) else None
        elif isinstance(node, ast.alias):
            named = next((n for n in node.name.split(".") if _bad_identifier(n)), None)
        if named is not None:
            out.append(f"{where}:{getattr(node, 'lineno', '?')}: {named!r}")
    return out


def family_knowledge_outside_topology(root: Path = SRC) -> list[str]:
    """Findings in every module under `root` (a prunekit package folder) but topology/ and catalog/."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in EXEMPT:
            continue
        out += findings(path.read_text(), str(rel))
    return out


def test_no_module_outside_topology_names_a_family_attribute():
    found = family_knowledge_outside_topology()
    assert not found, "family knowledge outside topology/ (declare it on the family entry):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "code",
    [
        'if fam.name == "llama":\n    pass',
        "width = config.intermediate_size",
        "update.update(num_key_value_heads=2)",
        'getattr(cfg, "n_heads", None)',
        'SEGMENTS = {"embeddings", "wte"}',
        'name = "encoder.relative_attention_bias.weight"',
        'PREFIXES = ["Bert", "GPT2"]',
        "from transformers import LlamaForCausalLM",
        "TYPES = {'roberta', 'mpnet'}",
    ],
)
def test_the_scan_finds_family_knowledge(code):
    assert findings(code)


def test_the_scan_ignores_docstrings_comments_and_prose():
    code = '''
"""Gated FFNs (Llama, SmolLM2) and MPNet's position bias: "mpnet"."""


def f(x):
    """BERT-like: config.intermediate_size."""
    # fam.name == "llama"
    raise ValueError(f"{x}: a GPT2 model needs n_positions set")
'''
    assert findings(code) == []


def test_exempt_folders_are_not_scanned(tmp_path):
    for folder in (*EXEMPT, "compact"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.py").write_text('KEY = "intermediate_size"\n')
    assert family_knowledge_outside_topology(tmp_path) == ["compact/m.py:1: 'intermediate_size'"]
