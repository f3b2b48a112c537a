"""Readouts over time: turn per-step logits (T, B, K) into one prediction per example (B, K).

- ``last``: the logits of the last step (the reference's default decoder).
- ``avg``: the mean of the logits over a window of steps [start, end).
- ``max_conf``: per example, the logits of the step whose max softmax probability is highest.
- ``threshold``: per example, the first step whose max softmax probability reaches the threshold
  (0.9 in the reference's ``dthresh`` models), else the most confident step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def decode(
    logits: Tensor,
    decoder: str = "last",
    *,
    window: tuple[int, int] | None = None,
    threshold: float = 0.9,
    start: int = 0,
) -> Tensor:
    """Decode (T, B, K) logits into (B, K). ``start`` skips steps before the stimulus can arrive."""
    if logits.dim() != 3:
        raise ValueError(f"logits: expected (T, B, K), got shape {tuple(logits.shape)}")
    t = logits.shape[0]
    if decoder == "last":
        return logits[-1]
    if decoder == "avg":
        a, b = window if window is not None else (start, t)
        if not 0 <= a < b <= t:
            raise ValueError(f"window: need 0 <= start < end <= {t}, got {(a, b)}")
        return logits[a:b].mean(dim=0)
    if decoder not in ("max_conf", "threshold"):
        raise ValueError(f"decoder: unknown {decoder!r} (known: last, avg, max_conf, threshold)")
    if not 0 <= start < t:
        raise ValueError(f"start: need 0 <= start < {t}, got {start}")
    seq = logits[start:]
    conf = seq.softmax(dim=-1).amax(dim=-1)  # (T', B)
    step = conf.argmax(dim=0)  # most confident step per example
    if decoder == "threshold":
        hit = conf >= threshold
        first = hit.float().argmax(dim=0)  # first True (0 where none)
        step = torch.where(hit.any(dim=0), first, step)
    return seq[step, torch.arange(seq.shape[1], device=seq.device)]
