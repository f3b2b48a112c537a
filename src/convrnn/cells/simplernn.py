"""SimpleRNN cell (the reference's ``ConvNormBasicCell``).

    h_t = act( LN( W_i * x_t + b_i  +  W_s * h_{t-1} + b_s ) )

``*`` is a SAME convolution with ``kernel``; LN is per-sample over (C, H, W) with per-channel gain
and shift (on in the shallow zoo model, off in the intermediate one); ``act`` is ELU. The output
depth may differ from the input depth.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from convrnn.cells.base import Cell, CellConfig, CellContext, State, positive
from convrnn.ops import SameConv2d, TFLayerNorm, activation


@dataclass
class SimpleRNNConfig(CellConfig):
    type = "simplernn"
    out_channels: int | None = None
    kernel: int = 3
    layer_norm: bool = True
    activation: str = "elu"

    def check(self, where: str) -> None:
        positive(where, out_channels=self.out_channels, kernel=self.kernel)
        activation(self.activation)

    def build(self, ctx: CellContext) -> Cell:
        return SimpleRNNCell(self, ctx)


class SimpleRNNCell(Cell):
    def __init__(self, cfg: SimpleRNNConfig, ctx: CellContext) -> None:
        super().__init__(ctx)
        c = cfg.out_channels or ctx.in_channels
        self.out_channels = c
        self.s = SameConv2d(c, c, cfg.kernel)
        self.i = SameConv2d(ctx.in_channels, c, cfg.kernel)
        self.norm = TFLayerNorm(c) if cfg.layer_norm else None
        if cfg.layer_norm:
            # Zero biases would give the LayerNorm a constant input before the stimulus arrives (see
            # LSTMCell): distinct small biases keep its gradient finite.
            nn.init.normal_(self.i.bias, std=0.01)
        self.act = activation(cfg.activation)

    def state_channels(self) -> tuple[int, ...]:
        return (self.out_channels,)

    def update(self, prepared: tuple, state: State) -> tuple[Tensor, State]:
        x = prepared[0]
        (h,) = state
        z = self.i(x) + self.s(h)
        if self.norm is not None:
            z = self.norm(z)
        h = self.act(z)
        return h, (h,)
