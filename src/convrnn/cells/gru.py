"""Convolutional GRU cell (the reference's ``ConvGRUCell``).

    [r^, u^] = W_g * [x_t, h_{t-1}] + b_g            (b_g initialised to 1; see below for layer_norm)
    r = sigmoid(r^ + forget_bias),   u = sigmoid(u^)
    c = tanh( W_c * [x_t, r . h_{t-1}] + b_c )
    h_t = u . h_{t-1} + (1 - u) . c

``[a, b]`` concatenates channels (input first, then state); ``forget_bias`` is 1 in the reference.
With ``layer_norm`` each of r^, u^ and the candidate pre-activation is layer-normalised, and the biases
start with a spread of 0.01 (b_g around 1, b_c around 0) so that no LayerNorm sees a constant input
before the stimulus arrives (see ``GRUCell.__init__``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convrnn.cells.base import Cell, CellConfig, CellContext, State, positive
from convrnn.ops import SameConv2d, TFLayerNorm, cat_channels


@dataclass
class GRUConfig(CellConfig):
    type = "gru"
    out_channels: int | None = None
    kernel: int = 3
    forget_bias: float = 1.0
    layer_norm: bool = False

    def check(self, where: str) -> None:
        positive(where, out_channels=self.out_channels, kernel=self.kernel)

    def build(self, ctx: CellContext) -> Cell:
        return GRUCell(self, ctx)


class GRUCell(Cell):
    def __init__(self, cfg: GRUConfig, ctx: CellContext) -> None:
        super().__init__(ctx)
        c = cfg.out_channels or ctx.in_channels
        self.out_channels = c
        self.forget_bias = cfg.forget_bias
        self.gates = SameConv2d(ctx.in_channels + c, 2 * c, cfg.kernel)
        self.candidates = SameConv2d(ctx.in_channels + c, c, cfg.kernel)
        nn.init.ones_(self.gates.bias)
        self.norms = nn.ModuleList(TFLayerNorm(c) for _ in range(3)) if cfg.layer_norm else None
        if cfg.layer_norm:
            # Until the stimulus arrives x and h are zero, so every pre-activation equals its bias: with
            # constant biases each LayerNorm sees a constant input, and with TF's eps of 1e-12 scales its
            # gradient by 1e6, compounding over the silent steps (an infinite gradient norm in the zoo's
            # models). Distinct small biases keep the variance away from 0, as in LSTMCell; the gate bias
            # keeps its mean of 1 (which the LayerNorm removes anyway).
            with torch.no_grad():
                self.gates.bias.add_(torch.randn_like(self.gates.bias), alpha=0.01)
            nn.init.normal_(self.candidates.bias, std=0.01)

    def state_channels(self) -> tuple[int, ...]:
        return (self.out_channels,)

    def update(self, prepared: tuple, state: State) -> tuple[Tensor, State]:
        x = prepared[0]
        (h,) = state
        r_pre, u_pre = self.gates(cat_channels([x, h])).chunk(2, dim=1)
        if self.norms is not None:
            r_pre, u_pre = self.norms[0](r_pre), self.norms[1](u_pre)
        r = torch.sigmoid(r_pre + self.forget_bias)
        u = torch.sigmoid(u_pre)
        c_pre = self.candidates(cat_channels([x, r * h]))
        if self.norms is not None:
            c_pre = self.norms[2](c_pre)
        h = u * h + (1 - u) * torch.tanh(c_pre)
        return h, (h,)
