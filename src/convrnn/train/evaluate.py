"""Accuracy at every time step (and of the model's decoded readout) over a data loader."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from convrnn.model import ConvRNN


@dataclass
class StepAccuracy:
    """Top-1 / top-5 accuracy (fractions) per step, and of the decoded prediction."""

    n: int = 0
    top1: list[float] = field(default_factory=list)
    top5: list[float] = field(default_factory=list)
    decoded_top1: float = 0.0
    decoded_top5: float = 0.0

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "top1_per_step": self.top1,
            "top5_per_step": self.top5,
            "decoded_top1": self.decoded_top1,
            "decoded_top5": self.decoded_top5,
        }


def _hits(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """Correct-in-top-k counts for (..., B, K) logits, summed over the batch."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == y.unsqueeze(-1)).any(dim=-1).sum(dim=-1)


@torch.no_grad()
def evaluate(
    model: ConvRNN,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    times: int | None = None,
    presentation: str | None = None,
    device: torch.device | str = "cpu",
    limit: int | None = None,
) -> StepAccuracy:
    """Run ``model`` over (images, labels) batches; count hits at every step and for the readout."""
    model.eval().to(device)
    hits1 = hits5 = None
    dec1 = dec5 = 0
    n = 0
    for x, y in batches:
        if limit is not None and n >= limit:
            break
        if limit is not None:
            x, y = x[: limit - n], y[: limit - n]
        x, y = x.to(device), y.to(device)
        out = model(x, times=times, presentation=presentation)
        h1, h5 = _hits(out.logits, y, 1), _hits(out.logits, y, 5)
        hits1 = h1 if hits1 is None else hits1 + h1
        hits5 = h5 if hits5 is None else hits5 + h5
        dec1 += int(_hits(out.decoded, y, 1))
        dec5 += int(_hits(out.decoded, y, 5))
        n += len(y)
    if n == 0:
        raise ValueError("evaluate: no images to evaluate")
    return StepAccuracy(
        n=n,
        top1=[float(h) / n for h in hits1],
        top5=[float(h) / n for h in hits5],
        decoded_top1=dec1 / n,
        decoded_top5=dec5 / n,
    )
