"""Peak memory of this process: the resident-set high-water mark (Linux can reset it, so a measurement starts at
the current size instead of counting whatever the process loaded before), or CUDA's allocator peak."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


def status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux resets VmHWM to the current RSS on '5' written to clear_refs, so loading does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def maxrss_kb() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


def start_peak(device: torch.device) -> bool:
    """Start a peak measurement; False where the CPU high-water mark cannot be reset (it then counts from the
    process's start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def peak_mb(device: torch.device, exact: bool) -> float | None:
    """The peak since `start_peak` in MB (CPU: the process's resident set)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    kb = status_kb("VmHWM") if exact else maxrss_kb()
    return round(kb / 1024, 1) if kb else None
