"""torch's intra-op thread count, set for a stretch of work and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's thread count set for a measurement or a loop of small operations (None: unchanged), restored
    after."""
    old = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(old)
