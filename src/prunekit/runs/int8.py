"""int8 inference on a CPU on top of pruning: dynamic quantization by PyTorch or by ONNX Runtime.

Dynamic: weights int8 per output channel, activations quantized per batch at run time, so no calibration data
and the compacted structure is kept as it is. Two backends because which is faster depends on the CPU's int8
instructions (VNNI or not) and the model's shapes; `prunekit bench --int8` times both beside dense and pruned
fp32 in one process and evaluates them on the run's test split, so the choice is a measurement, not a default.
On x86 without VNNI (AVX2 / AVX-512F) the u8 x s8 products can saturate: weights then use 7 bits
(`reduce_range`), as both ONNX Runtime and PyTorch's fbgemm advise.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from prunekit.core.errors import PrunekitError, UsageError
from prunekit.kernels import unpack_block_sparse
from prunekit.kernels.unstructured import unpack_sparse
from prunekit.runs.export import SEGMENTS, export_onnx, make_inputs

Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnxruntime")


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (x86 VNNI, or any ARM: there saturation is no issue)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # unknown: the safe setting
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def _unpacked(model: nn.Module) -> nn.Module:
    """A copy of the model with plain linears (the sparse kernels have no int8 form)."""
    model = copy.deepcopy(model).cpu().eval()
    unpack_block_sparse(model)
    unpack_sparse(model)
    return model


def torch_int8(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """PyTorch dynamic quantization of every nn.Linear (per output channel) of a copy of `model`; other linear
    kinds (GPT-2's Conv1D, row-scattering linears) stay fp32 and are counted in the report."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    q = _unpacked(model)
    linears = [n for n, m in q.named_modules() if type(m) is nn.Linear]
    others = [n for n, m in q.named_modules() if isinstance(m, nn.Linear) and type(m) is not nn.Linear]
    others += [n for n, m in q.named_modules() if type(m).__name__ == "Conv1D"]
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(q, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return q, {"backend": "torch", "quantized": len(linears), "fp32": sorted(others)}


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, reduce_range: bool | None = None) -> dict:
    """ONNX Runtime dynamic quantization of an fp32 ONNX file's MatMul / Gemm weights (int8 per channel) into
    `dst`, written beside it first and moved into place only when complete."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    reduce_range = (not cpu_has_vnni()) if reduce_range is None else reduce_range
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        out = tmp / dst.name
        with contextlib.redirect_stdout(None), warnings.catch_warnings(), _root_log_quiet():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                src, out, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                op_types_to_quantize=["MatMul", "Gemm"],
            )  # fmt: skip
        for f in sorted(tmp.iterdir(), key=lambda f: f == out):  # the model file last
            os.replace(f, dst.parent / f.name)
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    return {"backend": "onnxruntime", "path": str(dst), "reduce_range": reduce_range,
            "size_bytes": dst.stat().st_size}  # fmt: skip


@contextlib.contextmanager
def _root_log_quiet():
    """The quantizer advises pre-processing through the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def export_int8(model: nn.Module, path: str | os.PathLike, **export_kwargs) -> dict[str, Any]:
    """The model as an int8 ONNX file: exported fp32 (checked against PyTorch), then quantized; the fp32 graph
    is a temporary. Returns export_onnx's record with the quantization's and the int8 graph's largest
    difference from PyTorch on the check inputs (int8 rounds: expect ~1e-2 on logits, not 1e-4)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the .onnx file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.fp32.", dir=path.parent) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        info = export_onnx(model, fp32, **export_kwargs)
        q = quantize_onnx(fp32, path)
    info.update(path=str(path), quantized=q, size_bytes=q["size_bytes"])
    info["int8_max_abs_diff"] = _int8_diff(OnnxModel(path), model)
    return info


def _int8_diff(session_model: OnnxModel, model: nn.Module) -> float:
    inputs = make_inputs(model.config, 3, 11, seed=1, segments=SEGMENTS in session_model.inputs)
    with torch.no_grad():
        ref = model.eval()(**inputs)
        got = session_model(**inputs)
    return max(float((got[k] - ref[k].float()).abs().max()) for k in session_model.outputs)


class Outputs(dict):
    """Named outputs read as keys or attributes, as a Hugging Face ModelOutput is."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OnnxModel(nn.Module):
    """An ONNX Runtime session called like the Hugging Face model it was exported from: input_ids,
    attention_mask (and token_type_ids where the graph takes them) in, a ModelOutput of torch tensors out, so
    prunekit's task evaluation and benchmark run it unchanged."""

    def __init__(self, path: str | os.PathLike, config: Any = None, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise PrunekitError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from e
        self.path = str(path)
        self.config = config
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> Outputs:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, SEGMENTS: token_type_ids}
        if attention_mask is None:
            feeds["attention_mask"] = torch.ones_like(input_ids)
        if token_type_ids is not None and SEGMENTS not in self.inputs and bool(token_type_ids.ne(0).any()):
            raise UsageError(f"{self.path} takes no token_type_ids, but the inputs have a second segment: "
                             "re-export the model with this prunekit")  # fmt: skip
        if SEGMENTS in self.inputs and token_type_ids is None:
            feeds[SEGMENTS] = torch.zeros_like(input_ids)
        arrays = {k: np.ascontiguousarray(feeds[k].detach().cpu().numpy().astype(np.int64)) for k in self.inputs}
        got = self.session.run(None, arrays)
        return Outputs({k: torch.from_numpy(v) for k, v in zip(self.outputs, got, strict=True)})
