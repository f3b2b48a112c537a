"""Peak memory of a piece of work: what activation checkpointing is measured by."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def peak_memory_bytes(fn: Callable[[], None], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated when it started.

    On a GPU from ``torch.cuda.max_memory_allocated``; on the CPU, which keeps no such counter, from
    the profiler's allocation events (``profile_memory=True``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocations are reported on the op that made them, frees outside ops as "[memory]" events:
    # their running sum in time order is the memory in use.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = best = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        best = max(best, cur)
    return best
