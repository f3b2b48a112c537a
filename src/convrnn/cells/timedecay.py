"""Time-decay cell (the reference's ``memory``): a leaky integrator with one scalar per layer.

    s_t = a * s_{t-1} + x_t,    out_t = s_t,    s_{-1} = 0

``a`` is used as is (no sigmoid, unconstrained). With ``trainable=False`` it is a frozen buffer: the
reference gives every non-cell layer such a memory with ``a = 0`` (so out_t = x_t), and its
checkpoints store that value, so it stays part of the weights. Under the fast schedule a frozen
``a = 0`` passes ``x_t`` through as the very same tensor, which lets the unroller see that a layer's
output repeats while its input does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convrnn.cells.base import Cell, CellConfig, CellContext, State


@dataclass
class TimeDecayConfig(CellConfig):
    type = "timedecay"
    decay: float = 0.0
    trainable: bool = True

    def build(self, ctx: CellContext) -> Cell:
        return TimeDecayCell(self, ctx)


class TimeDecayCell(Cell):
    worth_compiling = False  # a pass-through or one multiply-add

    def __init__(self, cfg: TimeDecayConfig, ctx: CellContext) -> None:
        super().__init__(ctx)
        self.out_channels = ctx.in_channels
        self.channels = ctx.in_channels
        value = torch.tensor([cfg.decay], dtype=torch.float32)
        if cfg.trainable:
            self.decay = nn.Parameter(value)
        else:
            self.register_buffer("decay", value)
        self._passthrough = False
        self._checked: tuple[Tensor, int, bool] | None = None

    def begin(self, fast: bool) -> None:
        # Read the (possibly loaded) frozen value once, not at every unroll: reading a tensor's
        # value waits for the device (and cannot happen inside a CUDA graph capture). It is read
        # again only when the tensor is another one or was written to (its version counter moved).
        decay = self.decay
        if not fast or decay.requires_grad:
            self._passthrough = False
            return
        checked = self._checked
        if checked is None or checked[0] is not decay or checked[1] != decay._version:
            checked = self._checked = (decay, decay._version, bool((decay == 0).all()))
        self._passthrough = checked[2]

    def state_channels(self) -> tuple[int, ...]:
        return (self.channels,)

    def init_state(self, like: Tensor) -> State:
        # The state takes the shape of the input: it also serves (B, C) readouts.
        return (None,)  # type: ignore[return-value]

    def update(self, prepared: tuple, state: State) -> tuple[Tensor, State]:
        x = prepared[0]
        (s,) = state
        # s_{-1} = 0, and a frozen a = 0 keeps nothing of s: both give x itself, exactly.
        s = x if s is None or self._passthrough else self.decay * s + x
        return s, (s,)
