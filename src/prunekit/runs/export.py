"""ONNX export of a (pruned) model's main output, checked against onnxruntime before it is kept.

The dynamo exporter (torch.export + onnxscript) is tried first; the TorchScript exporter is the
fallback for models torch.export cannot trace. Each attempt writes into a temporary sibling
directory and is only moved into place once it has passed the onnxruntime check, so a failed
export leaves nothing behind (external-data files, written for models over 2 GB, travel with it).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from prunekit.core.errors import PrunekitError, UsageError
from prunekit.topology import max_positions

INPUT_NAMES = ("input_ids", "attention_mask")
SEGMENTS = "token_type_ids"  # an input too where the model embeds segments (BERT-like pairs: QA, NLI)
# ModelOutput fields exported, in order of preference: task heads first, then a base model's states
_OUTPUTS = (("logits",), ("start_logits", "end_logits"), ("last_hidden_state",))

Exporter = Literal["auto", "dynamo", "torchscript"]


class _MainOutput(nn.Module):
    """Calls the model with ids and mask only (no KV cache) and returns the main output tensors,
    so both exporters see plain tensors in and out instead of a ModelOutput with a cache."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs
        self.extra = _no_cache(model)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        segments = {} if token_type_ids is None else {SEGMENTS: token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **segments, **self.extra)
        return tuple(out[k] for k in self.outputs)


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The graph's inputs: ids and mask, and token_type_ids for a model that embeds more than one segment (a
    graph without them would read every sentence pair as one segment)."""
    segments = int(getattr(getattr(model, "config", None), "type_vocab_size", 0) or 0) > 1
    try:
        takes = SEGMENTS in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes = False
    return (*INPUT_NAMES, SEGMENTS) if segments and takes else INPUT_NAMES


def _no_cache(model: nn.Module) -> dict:
    """Only models that name `use_cache` get it: others pass stray kwargs down to their attention."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def make_inputs(
    config, batch: int, seq: int, seed: int = 0, device: torch.device | str = "cpu", segments: bool = False
) -> dict:
    """Random ids with right padding in the last row, so the mask path is exercised too; with `segments`, token
    type 1 over the second half of every row (a sentence pair)."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(config, "vocab_size", 100))
    ids = torch.randint(min(3, vocab - 1), vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and seq > 2:
        mask[-1, -2:] = 0
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if segments:
        types = torch.zeros(batch, seq, dtype=torch.long)
        types[:, seq // 2 :] = 1
        inputs[SEGMENTS] = types.to(device)
    return inputs


def _check_shape(config, batch: int, seq: int) -> tuple[int, int]:
    """A batch and length other than the export example's, so a shape baked into the graph shows."""
    limit = max_positions(config)
    limit = limit - 2 if limit else None  # RoBERTa's positions start after the padding index
    new_seq = seq + 3
    if limit is not None and new_seq > limit:
        new_seq = max(2, seq - 1)
    return batch + 1, new_seq


def _example(model: nn.Module, example_inputs: dict | None, device: torch.device, segments: bool) -> dict:
    if example_inputs is None:
        return make_inputs(getattr(model, "config", None), 2, 8, device=device, segments=segments)
    missing = [k for k in INPUT_NAMES if k not in example_inputs]
    if "input_ids" in missing:
        raise UsageError("example_inputs needs 'input_ids' (and optionally 'attention_mask')")
    ids = example_inputs["input_ids"].to(device)
    mask = example_inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.to(device=device, dtype=ids.dtype)
    if ids.dim() != 2:
        raise UsageError(f"example input_ids must be (batch, seq), got shape {tuple(ids.shape)}")
    types = example_inputs.get(SEGMENTS)
    types = torch.zeros_like(ids) if types is None else types.to(device=device, dtype=ids.dtype)
    if ids.shape[0] == 1:  # torch.export specialises size-1 dimensions: export with two rows
        ids, mask, types = ids.repeat(2, 1), mask.repeat(2, 1), types.repeat(2, 1)
    return {"input_ids": ids, "attention_mask": mask, **({SEGMENTS: types} if segments else {})}


def _output_keys(model: nn.Module, inputs: dict) -> tuple[str, ...]:
    with torch.no_grad():
        result = model(**inputs, **_no_cache(model))
    for keys in _OUTPUTS:
        if all(isinstance(getattr(result, k, None), torch.Tensor) for k in keys):
            return keys
    raise UsageError(
        f"{type(model).__name__} returns none of logits, start/end logits or last_hidden_state; "
        "export a model with a standard Hugging Face head"
    )


def _export_dynamo(wrapper: nn.Module, inputs: dict, path: Path, opset: int | None, names: tuple[str, ...]) -> None:
    dims = {k: {0: "batch", 1: "sequence"} for k in inputs}
    torch.onnx.export(
        wrapper,
        (),
        str(path),
        kwargs=inputs,
        dynamo=True,
        dynamic_shapes=dims,
        input_names=list(inputs),
        output_names=list(names),
        opset_version=opset,
        external_data=False,  # still external when the weights exceed 2 GB
        verbose=False,
    )


def _export_torchscript(
    wrapper: nn.Module, inputs: dict, path: Path, opset: int | None, names: tuple[str, ...]
) -> None:
    axes = {n: {0: "batch", 1: "sequence"} for n in (*inputs, *names)}
    torch.onnx.export(
        wrapper,
        tuple(inputs.values()),
        str(path),
        dynamo=False,
        input_names=list(inputs),
        output_names=list(names),
        dynamic_axes=axes,
        opset_version=opset,
        do_constant_folding=True,
    )


_EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _max_diff(path: Path, wrapper: nn.Module, inputs: dict) -> float:
    """Largest |onnxruntime - PyTorch| over every exported output."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    feeds = {k: v.detach().cpu().numpy().astype(np.int64) for k, v in inputs.items() if k in wanted}
    got = sess.run(None, feeds)
    with torch.no_grad():
        ref = wrapper(**inputs)
    if len(got) != len(ref):
        raise PrunekitError(f"the ONNX graph has {len(got)} outputs, the model {len(ref)}")
    diff = 0.0
    for r, g in zip(ref, got, strict=True):
        r = r.detach().float().cpu().numpy()
        if r.shape != g.shape:
            raise PrunekitError(f"ONNX output shape {g.shape} differs from PyTorch's {r.shape}")
        diff = max(diff, float(np.abs(r - g).max())) if r.size else diff
    return diff


def _opset(path: Path) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and many warnings that say nothing about our models."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _reason(e: BaseException) -> str:
    """The root cause's first line: torch.onnx wraps the real error in a generic 'step 1/3' one."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_inputs: dict | None = None,
    opset: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
    exporter: Exporter = "auto",
) -> dict[str, Any]:
    """Export the main output (logits, start/end logits or last_hidden_state) with dynamic batch and
    sequence axes; inputs are `input_ids` and `attention_mask` (and `token_type_ids` for a model that embeds
    segments: `input_names`), decoders run without KV cache.

    With `check`, onnxruntime must match PyTorch within `atol` on inputs of another shape than the
    export example; an attempt that fails to export or to match falls back to the next exporter.
    Returns path, exporter, opset, max_abs_diff (None unchecked), size_bytes (with external data).
    """
    if exporter not in ("auto", *_EXPORTERS):
        raise UsageError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if floats - {torch.float32}:
        raise UsageError(
            f"ONNX export needs an fp32 model, this one has {sorted(map(str, floats))}: call model.float()"
        )
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the .onnx file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    training = {m: m.training for m in model.modules()}  # per module: a partly frozen model stays so
    model.eval()
    try:
        segments = SEGMENTS in input_names(model)
        inputs = _example(model, example_inputs, device, segments)
        names = _output_keys(model, inputs)
        wrapper = _MainOutput(model, names).eval()
        config = getattr(model, "config", None)
        check_shape = _check_shape(config, *inputs["input_ids"].shape)
        check_inputs = make_inputs(config, *check_shape, 1, device, segments=segments)
        order = list(_EXPORTERS) if exporter == "auto" else [exporter]
        failures = []
        for name in order:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            try:
                target = tmp / path.name  # external data is named after the file: keep the final name
                with _quiet():
                    _EXPORTERS[name](wrapper, inputs, target, opset, names)
                diff = _max_diff(target, wrapper, check_inputs) if check else None
                if diff is not None and not diff <= atol:  # `not <=` also catches NaN
                    raise PrunekitError(f"onnxruntime differs from PyTorch by {diff:.3g} (> atol {atol:g})")
                result = {
                    "path": str(path),
                    "exporter": name,
                    "opset": _opset(target),
                    "max_abs_diff": diff,
                    "size_bytes": sum(f.stat().st_size for f in tmp.iterdir()),
                    "outputs": list(names),
                }
                for f in sorted(tmp.iterdir(), key=lambda f: f == target):  # the model file last
                    os.replace(f, path.parent / f.name)
                return result
            except Exception as e:  # every failure is reported together below
                failures.append(f"{name}: {_reason(e)}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        raise PrunekitError(f"ONNX export of {type(model).__name__} failed ({'; '.join(failures)})")
    finally:
        for m, flag in training.items():
            m.training = flag
