"""Layer-by-layer calibration, as the SparseGPT and Wanda references do it: the inputs of the first block are
captured once for every calibration batch, then each block in turn is run on them with hooks on its linears (the
statistics a pruner needs), pruned, and run again so its pruned outputs become the next block's inputs.

Why not one forward of the whole model: every block is then measured on the inputs it will really see (the blocks
before it already pruned, so it compensates their error), and memory holds one block's activations for the
calibration set instead of every linear's at once. The model's own forward is used up to the first block (its
masks, position embeddings, relative-position bias are captured as it passes them), so every family works.

`stages=sublayer_stages` goes one step further inside a block (GPTQ's "true sequential"): the linears that read one
tensor (q / k / v, then the attention output, then the FFN inputs, then its output) are measured and pruned in
turn, so the attention output projection is measured on what the pruned q / k / v produce, and so on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from prunekit.core.memory import peak_mb, start_peak
from prunekit.importance.calibration import InputRecorder, Statistic, count_tokens, model_inputs, no_tokens
from prunekit.topology import BlockSpec, describe, get_module


class _Captured(Exception):
    """Raised by the hook on the first block: the rest of the model is not run while capturing."""


class _Measured(Exception):
    """Raised once every linear being measured has read its input: the rest of the block is not run."""


Stages = Callable[[BlockSpec], list[list[str]]]


def sublayer_stages(spec: BlockSpec) -> list[list[str]]:
    """The block's linears in groups that read one tensor, in the order the forward reaches them."""
    stages: list[list[str]] = []
    if spec.attention is not None:
        *inputs, output = spec.attention.linears()
        stages += [inputs, [output]]
    if spec.ffn is not None:
        stages += [list(spec.ffn.inputs), [spec.ffn.output]]
    return [s for s in stages if s]


@dataclass
class BlockInput:
    args: tuple
    kwargs: dict[str, Any]
    tokens: torch.Tensor | None  # (batch * seq,) bool: the non-padding tokens the statistics count


def _no_cache(value: Any) -> Any:
    """A key/value cache in a block's arguments would grow with every re-run of the block: calibration runs none."""
    return None if type(value).__name__.endswith("Cache") else value


@torch.no_grad()
def first_block_inputs(model: nn.Module, first: nn.Module, batches: Iterable[dict]) -> tuple[list[BlockInput], int]:
    captured: list[BlockInput] = []
    state: dict[str, torch.Tensor | None] = {"tokens": None}

    def capture(module, args, kwargs):
        tokens = state["tokens"]
        captured.append(BlockInput(tuple(_no_cache(a) for a in args),
                                    {k: _no_cache(v) for k, v in kwargs.items()}, tokens))  # fmt: skip
        raise _Captured

    handle = first.register_forward_pre_hook(capture, with_kwargs=True)
    device = next(model.parameters()).device
    extra = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    count = 0
    try:
        for batch in batches:
            inputs = model_inputs(batch, device)
            tokens, state["tokens"] = count_tokens(inputs)
            count += tokens
            with contextlib.suppress(_Captured):
                model(**inputs, **extra)
    finally:
        handle.remove()
    return captured, count


def with_hidden(item: BlockInput, hidden: torch.Tensor) -> BlockInput:
    if item.args:
        return BlockInput((hidden, *item.args[1:]), item.kwargs, item.tokens)
    return BlockInput(item.args, {**item.kwargs, "hidden_states": hidden}, item.tokens)


def run_block(block: nn.Module, item: BlockInput) -> torch.Tensor:
    out = block(*item.args, **item.kwargs)
    return out[0] if isinstance(out, tuple | list) else out


@torch.no_grad()
def calibrate_layer_by_layer(
    model: nn.Module,
    batches: Iterable[dict],
    statistic: Statistic,
    prune_block: Callable[[BlockSpec, dict[str, torch.Tensor]], None],
    *,
    what: str,
    progress: bool = False,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """For every block in order: the fp64 sum over the calibration tokens (padding excluded) of `statistic(X)` for
    each of its linears, X the linear's input as (tokens, in) with the blocks before already pruned; then
    `prune_block(block, sums)`, which changes the block's weights in place. With `stages`, each stage's linears in
    turn: measured with the stages before them pruned, then `prune_block(block, sums of the stage)`. Returns the
    token count, the seconds and the peak memory (MB) of the whole calibration. `what` names the caller in errors."""
    topo = describe(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    exact = start_peak(device)
    start = time.perf_counter()
    try:
        items, tokens = first_block_inputs(model, get_module(model, topo.blocks[0].name), batches)
        if tokens == 0 or not items:
            raise no_tokens(what)
        columns = (TextColumn(f"[bold]{what}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        bar = Progress(*columns, TextColumn("{task.description}"), disable=not progress, console=Console(stderr=True))
        with bar:
            task = bar.add_task("", total=topo.num_layers)
            for spec in topo.blocks:
                bar.update(task, description=f"block {spec.index}: measuring")
                block = get_module(model, spec.name)
                for names in stages(spec) if stages is not None else [spec.linears()]:
                    sums = _block_statistics(model, block, names, items, statistic)
                    bar.update(task, description=f"block {spec.index}: pruning")
                    prune_block(spec, sums)
                    del sums
                items = [with_hidden(item, run_block(block, item)) for item in items]
                bar.advance(task)
    finally:
        model.train(was_training)
    return {"tokens": tokens, "seconds": round(time.perf_counter() - start, 2),
            "peak_memory_mb": peak_mb(device, exact)}  # fmt: skip


def _block_statistics(
    model: nn.Module, block: nn.Module, names: list[str], items: list[BlockInput], statistic: Statistic
) -> dict[str, torch.Tensor]:
    recorder = InputRecorder(model, names, statistic)
    pending: set[str] = set()

    def reached(name: str):
        def hook(module, args):  # after the recorder's own pre-hook, so the input is already counted
            pending.discard(name)
            if not pending:
                raise _Measured

        return hook

    handles = [get_module(model, n).register_forward_pre_hook(reached(n)) for n in names]
    try:
        for item in items:
            recorder.reset(item.tokens)
            pending.update(names)
            with contextlib.suppress(_Measured):
                run_block(block, item)
    finally:
        recorder.remove()
        for h in handles:
            h.remove()
    return recorder.sums
