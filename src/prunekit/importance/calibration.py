"""Statistics of every block linear's input over calibration tokens: what Wanda (sum of x_j^2) and SparseGPT
(X^T X) read. Padding tokens are left out. Linears that read the same tensor (q / k / v, gate / up) share one
computation: X^T X of a 1,536-wide input over 65k tokens is the costliest step of a calibration, and each batch's
statistic is computed in the activations' precision and summed in fp64 across batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.topology import get_module

Statistic = Callable[[torch.Tensor], torch.Tensor]


class InputRecorder:
    """Forward pre-hooks on the named linears that add `statistic(X)` of their input to `sums`. `tokens` (a
    (batch * seq,) bool or None) selects the real tokens of the batch being run; `reset()` between forwards."""

    def __init__(self, model: nn.Module, names: list[str], statistic: Statistic) -> None:
        self.statistic, self.sums = statistic, {}
        self.tokens: torch.Tensor | None = None
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # inputs of this forward (kept alive) and stats
        self._handles = [get_module(model, n).register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def record(module, args):
            x = args[0]  # the tensor object itself: q, k and v are called with the same one
            stat = next((s for seen, s in self._seen if seen is x), None)
            if stat is None:
                flat = x.detach().reshape(-1, x.shape[-1])
                if self.tokens is not None and self.tokens.numel() == flat.shape[0]:
                    flat = flat[self.tokens]
                stat = self.statistic(flat.float()).double()
                self._seen.append((x, stat))
            self.sums[name] = self.sums[name] + stat if name in self.sums else stat.clone()

        return record

    def reset(self, tokens: torch.Tensor | None) -> None:
        self.tokens, self._seen = tokens, []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._seen = []


def count_tokens(inputs: dict[str, torch.Tensor]) -> tuple[int, torch.Tensor | None]:
    """The batch's real-token count and its (batch * seq,) mask (None: every token is real)."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return int(inputs["input_ids"].numel()), None
    return int(mask.sum()), mask.reshape(-1).bool()


def model_inputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}


def no_tokens(what: str) -> UsageError:
    return UsageError(f"{what} got no calibration tokens: give calibration_examples > 0 and a training split")


@torch.no_grad()
def input_statistics(
    model: nn.Module,
    names: list[str],
    batches: Iterable[dict],
    statistic: Statistic,
    what: str,
) -> tuple[dict[str, torch.Tensor], int]:
    """The fp64 sum over calibration batches of `statistic(X)` for every named linear (GPT-2's Conv1D included), X
    its input on the non-padding tokens as (tokens, in), from one forward per batch of the model as it is (eval
    mode for the measurement); and the token count. `what` names the caller in the error for no tokens."""
    recorder = InputRecorder(model, names, statistic)
    was_training, tokens = model.training, 0
    device = next(model.parameters()).device
    model.eval()
    try:
        for batch in batches:
            inputs = model_inputs(batch, device)
            count, mask = count_tokens(inputs)
            tokens += count
            recorder.reset(mask)
            model(**inputs)
    finally:
        recorder.remove()
        model.train(was_training)
    if tokens == 0:
        raise no_tokens(what)
    return recorder.sums, tokens
