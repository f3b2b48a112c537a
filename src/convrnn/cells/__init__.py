"""Recurrent cells: one file per cell, the equations in each docstring, one shared interface.

Every cell has a config dataclass (its ``type`` names it in a model spec) and a module built from
it; :data:`CELL_CONFIGS` maps each ``type`` to its config class.
"""

from convrnn.cells.base import Cell, CellConfig, CellContext, State
from convrnn.cells.gru import GRUCell, GRUConfig
from convrnn.cells.identity import IdentityCell, IdentityConfig
from convrnn.cells.intersectionrnn import IntersectionRNNCell, IntersectionRNNConfig
from convrnn.cells.lstm import LSTMCell, LSTMConfig
from convrnn.cells.rgc import RGCCell, RGCConfig
from convrnn.cells.simplernn import SimpleRNNCell, SimpleRNNConfig
from convrnn.cells.timedecay import TimeDecayCell, TimeDecayConfig
from convrnn.cells.ugrnn import UGRNNCell, UGRNNConfig

CELL_CONFIGS: dict[str, type[CellConfig]] = {
    c.type: c
    for c in (
        IdentityConfig,
        TimeDecayConfig,
        SimpleRNNConfig,
        GRUConfig,
        LSTMConfig,
        UGRNNConfig,
        IntersectionRNNConfig,
        RGCConfig,
    )
}

__all__ = [
    "CELL_CONFIGS",
    "Cell",
    "CellConfig",
    "CellContext",
    "GRUCell",
    "GRUConfig",
    "IdentityCell",
    "IdentityConfig",
    "IntersectionRNNCell",
    "IntersectionRNNConfig",
    "LSTMCell",
    "LSTMConfig",
    "RGCCell",
    "RGCConfig",
    "SimpleRNNCell",
    "SimpleRNNConfig",
    "State",
    "TimeDecayCell",
    "TimeDecayConfig",
    "UGRNNCell",
    "UGRNNConfig",
]
