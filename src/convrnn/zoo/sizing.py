"""Model size: trainable parameters of a spec, and the width multiplier that matches a parameter budget.

Comparisons "at the same number of parameters" (a cell against a wider feedforward net, a searched
architecture against a fixed one) scale the zoo's channel width multiplier until the count is as close
to the budget as the channel rounding allows.
"""

from __future__ import annotations

from collections.abc import Callable

from convrnn.errors import SpecError
from convrnn.spec import ModelSpec

__all__ = ["WIDTH_GRID", "count_params", "match_width"]

WIDTH_GRID = 256  # widths searched are k / WIDTH_GRID


def count_params(spec: ModelSpec) -> int:
    """Trainable parameters of the model a spec builds."""
    from convrnn.zoo.registry import create_model

    return sum(p.numel() for p in create_model(spec).parameters() if p.requires_grad)


def match_width(build: Callable[[float], ModelSpec], target: int, start: float) -> tuple[float, int]:
    """The width k/WIDTH_GRID whose model's parameter count is closest to ``target``, and that count.

    Channel counts only grow with the width, so the count does too: bisection on k finds the first width
    at or above the target, and the one below it is the other candidate.
    """
    if target < 1:
        raise SpecError(f"target: a parameter budget must be >= 1, got {target}")
    counts: dict[int, int] = {}

    def params(k: int) -> int:
        if k not in counts:
            counts[k] = count_params(build(k / WIDTH_GRID))
        return counts[k]

    lo, hi = 1, max(2, round(start * WIDTH_GRID))
    while params(hi) < target:
        lo, hi = hi, hi * 2
        if hi > 64 * WIDTH_GRID:
            raise SpecError(f"target: no width up to 64 reaches {target:,} parameters")
    if params(lo) >= target:
        k = lo
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if params(mid) >= target else (mid, hi)
        k = min((lo, hi), key=lambda j: (abs(params(j) - target), j))
    return k / WIDTH_GRID, params(k)
