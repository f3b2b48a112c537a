"""Identity cell: a purely feedforward layer.

    out_t = x_t

No state, no parameters. Use it for layers with no memory at all; the reference's non-cell layers
keep a (frozen) decaying memory instead, see :mod:`convrnn.cells.timedecay`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from convrnn.cells.base import Cell, CellConfig, CellContext, State


@dataclass
class IdentityConfig(CellConfig):
    type = "identity"

    def build(self, ctx: CellContext) -> Cell:
        return IdentityCell(ctx)


class IdentityCell(Cell):
    worth_compiling = False  # a pass-through or one multiply-add

    def __init__(self, ctx: CellContext) -> None:
        super().__init__(ctx)
        self.out_channels = ctx.in_channels

    def update(self, prepared: tuple, state: State) -> tuple[Tensor, State]:
        x = prepared[0]
        return x, state
