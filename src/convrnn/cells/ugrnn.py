"""Convolutional UGRNN cell (update-gate RNN; the reference's ``ConvUGRNNCell``).

    [g^, c^] = W * [x_t, h_{t-1}] + b
    g = sigmoid(g^ + forget_bias),   h_t = g . h_{t-1} + (1 - g) . tanh(c^)

``forget_bias`` is 1 in the reference. (The reference's LayerNorm branch is broken, so none here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from convrnn.cells.base import Cell, CellConfig, CellContext, State, positive
from convrnn.ops import SameConv2d, cat_channels


@dataclass
class UGRNNConfig(CellConfig):
    type = "ugrnn"
    out_channels: int | None = None
    kernel: int = 3
    forget_bias: float = 1.0

    def check(self, where: str) -> None:
        positive(where, out_channels=self.out_channels, kernel=self.kernel)

    def build(self, ctx: CellContext) -> Cell:
        return UGRNNCell(self, ctx)


class UGRNNCell(Cell):
    def __init__(self, cfg: UGRNNConfig, ctx: CellContext) -> None:
        super().__init__(ctx)
        c = cfg.out_channels or ctx.in_channels
        self.out_channels = c
        self.forget_bias = cfg.forget_bias
        self.conv = SameConv2d(ctx.in_channels + c, 2 * c, cfg.kernel)

    def state_channels(self) -> tuple[int, ...]:
        return (self.out_channels,)

    def update(self, prepared: tuple, state: State) -> tuple[Tensor, State]:
        x = prepared[0]
        (h,) = state
        g_pre, c_pre = self.conv(cat_channels([x, h])).chunk(2, dim=1)
        g = torch.sigmoid(g_pre + self.forget_bias)
        h = g * h + (1 - g) * torch.tanh(c_pre)
        return h, (h,)
