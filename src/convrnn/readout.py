"""Readouts over time: turn per-step logits (T, B, K) into one prediction per example (B, K).

- ``last``: the logits of the last step (the reference's default decoder).
- ``avg``: the mean of the logits over the decoding window.
- ``max_conf``: per example, the logits of the step in the window whose max softmax probability is
  highest.
- ``threshold``: per example, the first step in the window whose max softmax probability reaches the
  threshold (0.9 in the reference's ``dthresh`` models), else the most confident step.

As in the reference, the softmax that measures confidence has a temperature ``beta``
(``softmax(beta * logits)``); the ``tmaxconf`` models learn it (a trainable scalar, initialised
uniformly in [0, 1)), the others keep 1. The decoding window defaults to the reference's
``[num_layers, T)``: from one step after the stimulus can first reach the readout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DECODERS = ("last", "avg", "max_conf", "threshold")


def decode(
    logits: Tensor,
    decoder: str = "last",
    *,
    window: tuple[int, int] | None = None,
    threshold: float | Tensor = 0.9,
    beta: float | Tensor = 1.0,
) -> Tensor:
    """Decode (T, B, K) logits into (B, K); ``window`` = [start, end) of the steps considered."""
    if logits.dim() != 3:
        raise ValueError(f"logits: expected (T, B, K), got shape {tuple(logits.shape)}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder: unknown {decoder!r} (known: {', '.join(DECODERS)})")
    t = logits.shape[0]
    if decoder == "last":
        return logits[-1]
    a, b = window if window is not None else (0, t)
    if not 0 <= a < b <= t:
        raise ValueError(f"window: need 0 <= start < end <= {t} steps, got {(a, b)}")
    seq = logits[a:b]
    if decoder == "avg":
        return seq.mean(dim=0)
    # Confidence: the max class probability of softmax(beta * logits) at each step, (T', B).
    conf = torch.softmax(beta * seq, dim=-1).amax(dim=-1)
    step = conf.argmax(dim=0)  # the most confident step per example
    if decoder == "threshold":
        hit = conf >= threshold
        first = hit.int().argmax(dim=0)  # the first step that crosses (0 where none does)
        step = torch.where(hit.any(dim=0), first, step)
    return seq[step, torch.arange(seq.shape[1], device=seq.device)]


class Decoder(nn.Module):
    """The model's readout over time, holding its scalars.

    With ``trainable`` the softmax temperature ``beta`` (and, for ``threshold``, the threshold) are
    parameters initialised as the reference does (uniform in [0, 1)); otherwise they are the spec's
    constants. (Selecting a step is not differentiable, so beta gets no gradient through the
    selection; it still decides which step is selected, so a converted checkpoint's value matters.)
    """

    def __init__(
        self, decoder: str, window: tuple[int, int] | None, threshold: float, beta: float, trainable: bool
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.window = window
        self.trainable = trainable and decoder in ("max_conf", "threshold")
        if self.trainable:
            self.beta = nn.Parameter(torch.rand(1))
            if decoder == "threshold":
                self.threshold = nn.Parameter(torch.rand(1))
            else:
                self.threshold = threshold
        else:
            self.beta, self.threshold = beta, threshold

    def forward(self, logits: Tensor, default_start: int) -> Tensor:
        window = self.window
        if window is None and self.decoder != "last":
            window = (min(default_start, logits.shape[0] - 1), logits.shape[0])
        return decode(logits, self.decoder, window=window, threshold=self.threshold, beta=self.beta)

    def extra_repr(self) -> str:
        return f"{self.decoder}, window={self.window}, trainable={self.trainable}"
