"""Requested recording bins (ms after stimulus onset) onto model steps.

Model step ``t`` stands for the window ``[offset + t * step_ms, offset + (t + 1) * step_ms)`` (10 ms in
the zoo). A requested bin ``[a, b)`` becomes a weighted average of model steps:

* every step whose window overlaps ``[a, b)`` enters with a weight proportional to the overlap in ms
  (weights sum to 1), so ``(70, 80)`` is step 7 alone, ``(75, 85)`` is half step 7 and half step 8, and
  ``(100, 200)`` the mean of steps 10-19. This is Brain-Score's ``portion`` rule
  (``brainscore_vision.model_helpers.brain_transformation.temporal.time_align``) for equal steps.
* a bin that overlaps no step by a positive length (only a zero-width bin ``[a, a)`` can, since bins
  must lie inside the window) takes the nearest step: the one whose window holds ``a`` (the last step
  for ``a`` = the window's end).

A bin must lie inside the unrolled window ``[offset, offset + times * step_ms]``: a model cannot report
what it was not run for, and averaging only the part that was run would mislabel the bin.

Bins come in every form Brain-Score hands a model (:func:`as_time_bins`): a list or tuple of pairs, a
NumPy ``(n, 2)`` array, an object array of pair tuples (``assembly['time_bin'].values`` of a temporal
assembly), a list holding a 0-d object array (``timebins_from_assembly`` of an assembly whose time bin
was squeezed away: ``[array((70, 170), dtype=object)]``), or an xarray ``time_bin`` coordinate.

Pure NumPy: usable (and tested) without Brain-Score installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TimeBinError", "as_time_bins", "steps_for_bins", "time_bin_weights"]


class TimeBinError(ValueError):
    """A requested time bin cannot be mapped onto the model's steps; the message names the bin."""


def _pair(b: Any) -> list[Any]:
    """One bin as a plain list: 0-d object arrays and tuples alike (Brain-Score's temporal wrapper
    unpacks them the same way, with ``.tolist()``)."""
    if hasattr(b, "tolist"):  # NumPy arrays and scalars; a 0-d object array gives back its tuple
        b = b.tolist()
    return list(b)


def as_time_bins(time_bins: Any) -> list[tuple[float, float]]:
    """``[(start_ms, end_ms), ...]`` from any form Brain-Score passes (see the module docstring).

    Raises:
        TimeBinError: not a non-empty sequence of pairs of numbers (the message shows what was given).
    """
    given = time_bins
    if hasattr(time_bins, "dims") and hasattr(time_bins, "values"):  # an xarray coordinate or DataArray
        time_bins = time_bins.values
    if isinstance(time_bins, np.ndarray):
        # A 0-d array is one squeezed bin; a numeric (n, 2) array becomes lists; an object array of
        # tuples is iterated as it is.
        time_bins = (
            [time_bins] if time_bins.ndim == 0 else time_bins.tolist() if time_bins.dtype != object else time_bins
        )
    message = f"time_bins: expected a non-empty list of (start_ms, end_ms) pairs, got {given!r}"
    try:
        bins = [_pair(b) for b in time_bins]
        out = [(float(b[0]), float(b[1])) for b in bins if len(b) == 2]
    except (TypeError, ValueError, IndexError):
        raise TimeBinError(message) from None
    if len(out) != len(bins) or not out:
        raise TimeBinError(message)
    return out


def _as_bins(time_bins: Any) -> np.ndarray:
    return np.asarray(as_time_bins(time_bins), dtype=np.float64)


def time_bin_weights(
    time_bins: Sequence[Sequence[float]], times: int, step_ms: float = 10.0, offset_ms: float = 0.0
) -> np.ndarray:
    """Weights ``(len(time_bins), times)``: row ``i`` averages the model steps into requested bin ``i``.

    Args:
        time_bins: ``[(start_ms, end_ms), ...]`` after stimulus onset, e.g. ``[(70, 80), (100, 200)]``,
            in any form :func:`as_time_bins` takes.
        times: steps the model is unrolled for (26 with the ``neural`` presentation).
        step_ms: milliseconds per step.
        offset_ms: when step 0 starts, in ms after onset.

    Raises:
        TimeBinError: a bin that is not a pair of finite numbers, ends before it starts, or leaves the
            unrolled window (the message names the bin and the window).
    """
    if times < 1:
        raise TimeBinError(f"times: must be >= 1, got {times}")
    if not step_ms > 0:
        raise TimeBinError(f"step_ms: must be > 0, got {step_ms}")
    bins = _as_bins(time_bins)
    lo, hi = offset_ms, offset_ms + times * step_ms
    starts = offset_ms + step_ms * np.arange(times)
    ends = starts + step_ms
    weights = np.zeros((len(bins), times), dtype=np.float64)
    for i, (a, b) in enumerate(bins):
        where = f"time_bins[{i}] = ({a:g}, {b:g}) ms"
        if not (np.isfinite(a) and np.isfinite(b)):
            raise TimeBinError(f"{where}: start and end must be finite")
        if a > b:
            raise TimeBinError(f"{where}: ends before it starts")
        if a < lo or b > hi:
            raise TimeBinError(
                f"{where}: outside the unrolled window [{lo:g}, {hi:g}] ms ({times} steps of {step_ms:g} ms"
                + (f" from {offset_ms:g} ms" if offset_ms else "")
                + ")"
            )
        overlap = np.clip(np.minimum(b, ends) - np.maximum(a, starts), 0.0, None)
        if overlap.sum() > 0:
            weights[i] = overlap / overlap.sum()
        else:
            weights[i, min(int((a - offset_ms) // step_ms), times - 1)] = 1.0
    return weights


def steps_for_bins(weights: np.ndarray) -> list[int]:
    """The model steps any bin draws on (the only ones worth computing), ascending."""
    return [int(t) for t in np.flatnonzero(np.asarray(weights).sum(axis=0) > 0)]
