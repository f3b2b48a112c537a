"""Convolutional IntersectionRNN cell (the reference's ``ConvIntersectionRNNCell``).

    [g_h, h^, g_y, y^] = W * [x_t, h_{t-1}] + b
    a = sigmoid(g_h + forget_bias),   b = sigmoid(g_y + forget_bias)
    h_t = a . h_{t-1} + (1 - a) . tanh(h^)          (passed through time: the state)
    y_t = b . x_t     + (1 - b) . relu(y^)          (passed through depth: the output)

The input and the state must have the same depth (``y`` mixes ``x`` in directly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from convrnn.cells.base import Cell, CellConfig, CellContext, State, positive
from convrnn.errors import SpecError
from convrnn.ops import SameConv2d, cat_channels


@dataclass
class IntersectionRNNConfig(CellConfig):
    type = "intersectionrnn"
    out_channels: int | None = None
    kernel: int = 3
    forget_bias: float = 1.0

    def check(self, where: str) -> None:
        positive(where, out_channels=self.out_channels, kernel=self.kernel)

    def check_context(self, ctx: CellContext, where: str) -> None:
        super().check_context(ctx, where)
        if self.out_channels is not None and self.out_channels != ctx.in_channels:
            raise SpecError(
                f"{where}.out_channels: an IntersectionRNN mixes its input into its output, so its "
                f"depth ({self.out_channels}) must equal the input's ({ctx.in_channels})"
            )

    def build(self, ctx: CellContext) -> Cell:
        return IntersectionRNNCell(self, ctx)


class IntersectionRNNCell(Cell):
    def __init__(self, cfg: IntersectionRNNConfig, ctx: CellContext) -> None:
        super().__init__(ctx)
        c = ctx.in_channels
        self.out_channels = c
        self.forget_bias = cfg.forget_bias
        self.conv = SameConv2d(2 * c, 4 * c, cfg.kernel)

    def state_channels(self) -> tuple[int, ...]:
        return (self.out_channels,)

    def update(self, prepared: tuple, state: State) -> tuple[Tensor, State]:
        x = prepared[0]
        (h,) = state
        gh, hh, gy, yy = self.conv(cat_channels([x, h])).chunk(4, dim=1)
        a = torch.sigmoid(gh + self.forget_bias)
        b = torch.sigmoid(gy + self.forget_bias)
        h = a * h + (1 - a) * torch.tanh(hh)
        y = b * x + (1 - b) * torch.relu(yy)
        return y, (h,)
