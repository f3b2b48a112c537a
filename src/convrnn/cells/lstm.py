"""Convolutional LSTM cell (the reference's ``ConvLSTMCell``).

    [i, j, f, o] = W * [x_t, h_{t-1}] + b
    c_t = c_{t-1} . sigmoid(f + forget_bias + w_f . c_{t-1}) + sigmoid(i + w_i . c_{t-1}) . tanh(j)
    h_t = tanh(c_t) . sigmoid(o + w_o . c_{t-1})

The peephole terms ``w . c`` (added after the LayerNorm of i, f, o) are per-pixel (shape C x H x W, so they depend on the map size) and
present only with ``peepholes``; note the output gate peeks at the *previous* cell state, as in the
reference. With ``layer_norm`` each of i, j, f, o is layer-normalised before the update and c_t after
it (the normalised c_t is what is carried forward). The state is (c, h).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convrnn.cells.base import Cell, CellConfig, CellContext, State, positive
from convrnn.ops import SameConv2d, TFLayerNorm, cat_channels


@dataclass
class LSTMConfig(CellConfig):
    type = "lstm"
    out_channels: int | None = None
    kernel: int = 3
    forget_bias: float = 1.0
    peepholes: bool = False
    layer_norm: bool = False

    def check(self, where: str) -> None:
        positive(where, out_channels=self.out_channels, kernel=self.kernel)

    def build(self, ctx: CellContext) -> Cell:
        return LSTMCell(self, ctx)


class LSTMCell(Cell):
    def __init__(self, cfg: LSTMConfig, ctx: CellContext) -> None:
        super().__init__(ctx)
        c = cfg.out_channels or ctx.in_channels
        self.out_channels = c
        self.forget_bias = cfg.forget_bias
        self.conv = SameConv2d(ctx.in_channels + c, 4 * c, cfg.kernel)
        if cfg.peepholes:
            h, w = ctx.hw
            self.w_f = nn.Parameter(torch.empty(c, h, w).normal_(0, 0.1))
            self.w_i = nn.Parameter(torch.empty(c, h, w).normal_(0, 0.1))
            self.w_o = nn.Parameter(torch.empty(c, h, w).normal_(0, 0.1))
        self.peepholes = cfg.peepholes
        # Order: input, transform, forget, output, state (as the reference names them).
        self.norms = nn.ModuleList(TFLayerNorm(c) for _ in range(5)) if cfg.layer_norm else None
        if cfg.layer_norm:
            # Before the stimulus arrives, zero biases would make every LayerNorm input constant:
            # with TF's eps of 1e-12 each LayerNorm then scales gradients by 1e6, compounding through
            # the state over the silent steps. Distinct small biases keep the variance away from 0.
            nn.init.normal_(self.conv.bias, std=0.01)

    def state_channels(self) -> tuple[int, ...]:
        return (self.out_channels, self.out_channels)

    def update(self, prepared: tuple, state: State) -> tuple[Tensor, State]:
        x = prepared[0]
        c, h = state
        i, j, f, o = self.conv(cat_channels([x, h])).chunk(4, dim=1)
        if self.norms is not None:
            i, j, f, o = (n(g) for n, g in zip(self.norms, (i, j, f, o), strict=False))
        if self.peepholes:
            f = f + self.w_f * c
            i = i + self.w_i * c
            o = o + self.w_o * c
        c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * torch.tanh(j)
        if self.norms is not None:
            c = self.norms[4](c)
        h = torch.tanh(c) * torch.sigmoid(o)
        return h, (c, h)
