"""Shallow ConvRNNs (6 layers: 5 conv + readout), as the reference's ``*_shallow`` models.

At 224 px::

    conv1  7x7/2 conv -> 64, ELU, memory, max-pool 2/2          56 x 56
    conv2  3x3 conv -> 128, ELU, memory, max-pool               28 x 28
    conv3  3x3 conv -> 256 [ELU for the RGC], cell (28^2), pool  14 x 14
    conv4  3x3 conv -> 256 [ELU], cell (14^2), pool               7 x 7
    conv5  3x3 conv -> 512 [ELU], cell (7^2), pool (SAME, 7->4)   4 x 4
    imnetds 2x2 VALID conv -> classes, memory, global average pool

"memory" is the frozen time decay of the reference's non-cell layers (a = 0). Every channel count
is scaled by ``width``. The readout's 2x2 VALID conv needs a map of at least 2x2 (an input of 65 px
or more); below that its kernel is clamped to the map, as the reference clamps its RGC kernels, so
any ``image_size`` >= 32 builds. At the reference's sizes the architecture is exactly the
reference's. Layer -> area: conv3 V4, conv4 pIT, conv5 cIT/aIT.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from convrnn.cells import (
    CellConfig,
    GRUConfig,
    IntersectionRNNConfig,
    LSTMConfig,
    RGCConfig,
    SimpleRNNConfig,
    TimeDecayConfig,
    UGRNNConfig,
)
from convrnn.spec import Conv, EdgeSpec, GlobalAvgPool, LayerSpec, MaxPool, ModelSpec, PresentationSpec
from convrnn.zoo.registry import register_model, released

CHANNELS = (64, 128, 256, 256, 512)
AREAS = {"V4": ["conv3"], "pIT": ["conv4"], "cIT-aIT": ["conv5"], "IT": ["conv4", "conv5"]}


def scale(c: int, width: float) -> int:
    return max(1, round(c * width))


def frozen_memory() -> TimeDecayConfig:
    return TimeDecayConfig(decay=0.0, trainable=False)


def shallow_spec(
    name: str,
    cells: Callable[[int, int, float], CellConfig],
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    width: float = 1.0,
    times: int = 16,
    pre_activation: str | None = None,
) -> ModelSpec:
    """The shallow backbone with ``cells(index, channels, width)`` in conv3-conv5."""
    ch = [scale(c, width) for c in CHANNELS]
    layers = [
        LayerSpec("conv1", [Conv(ch[0], 7, 2, activation="elu")], frozen_memory(), [MaxPool()]),
        LayerSpec("conv2", [Conv(ch[1], 3, activation="elu")], frozen_memory(), [MaxPool()]),
    ]
    for i in (2, 3, 4):
        layers.append(
            LayerSpec(f"conv{i + 1}", [Conv(ch[i], 3, activation=pre_activation)], cells(i, ch[i], width), [MaxPool()])
        )
    layers.append(
        LayerSpec(
            "imnetds", [Conv(num_classes, 2, padding="valid", clamp_kernel=True)], frozen_memory(), [GlobalAvgPool()]
        )
    )
    names = [layer.name for layer in layers]
    edges = [EdgeSpec(a, b) for a, b in itertools.pairwise(names)]
    return ModelSpec(
        name=name,
        layers=layers,
        edges=edges,
        image_size=image_size,
        times=times,
        presentation=PresentationSpec("default", image_off=12),
        areas={k: list(v) for k, v in AREAS.items()},
    )


# The searched per-layer LSTM settings of the released lstm_shallow (configs/lstm_shallow.npz).
LSTM_KERNELS = (2, 3, 4)
LSTM_DEPTHS = (128, 256, 256)
LSTM_FORGET_BIAS = (1.3561755203084322, 0.977962918535079, 0.9249280259963113)
LSTM_PEEPHOLES = (False, True, False)
SIMPLERNN_DEPTHS = (128, 256, 256)

SHALLOW_CELLS: dict[str, Callable[[int, int, float], CellConfig]] = {
    "timedecay": lambda i, c, w: TimeDecayConfig(decay=0.0, trainable=True),
    "simplernn": lambda i, c, w: SimpleRNNConfig(out_channels=scale(SIMPLERNN_DEPTHS[i - 2], w), layer_norm=True),
    "gru": lambda i, c, w: GRUConfig(out_channels=c),
    "lstm": lambda i, c, w: LSTMConfig(
        out_channels=scale(LSTM_DEPTHS[i - 2], w),
        kernel=LSTM_KERNELS[i - 2],
        forget_bias=LSTM_FORGET_BIAS[i - 2],
        peepholes=LSTM_PEEPHOLES[i - 2],
        layer_norm=True,
    ),
    "ugrnn": lambda i, c, w: UGRNNConfig(out_channels=c),
    "intersectionrnn": lambda i, c, w: IntersectionRNNConfig(out_channels=c),
    # rgc_shallow (cells.py): all 3x3, no conv biases, sigmoid gates, residual_to_out_gate from r.
    "rgc": lambda i, c, w: RGCConfig(cell_channels=c, residual_to_out_gate=True, conv_bias=False),
}
# ImageNet val top-1 / top-5 (%) of the released checkpoints (the reference's README).
ACCURACY = {
    "timedecay": (50.06, 72.97),
    "simplernn": (61.11, 83.15),
    "gru": (62.16, 84.02),
    "lstm": (63.43, 84.89),
    "intersectionrnn": (65.42, 86.02),
    "ugrnn": (60.82, 83.23),
    "rgc": (66.97, 87.02),
}


def _register(cell: str) -> None:
    name = f"{cell}_shallow"
    cells = SHALLOW_CELLS[cell]
    pre_act = "elu" if cell == "rgc" else None

    def build(num_classes: int = 1000, image_size: int = 224, width: float = 1.0, times: int = 16) -> ModelSpec:
        return shallow_spec(
            name,
            cells,
            num_classes=num_classes,
            image_size=image_size,
            width=width,
            times=times,
            pre_activation=pre_act,
        )

    build.__doc__ = f"``{name}``: the shallow backbone with {cell} cells in conv3-conv5."
    register_model(name, weights=released(name, *ACCURACY[cell]))(build)


for _cell in SHALLOW_CELLS:
    _register(_cell)


@register_model("ff_shallow")
def ff_shallow(num_classes: int = 1000, image_size: int = 224, width: float = 1.0, times: int = 16) -> ModelSpec:
    """``ff_shallow``: the feedforward shallow backbone (conv + ELU in every layer, no recurrence)."""
    return shallow_spec(
        "ff_shallow",
        lambda i, c, w: frozen_memory(),
        num_classes=num_classes,
        image_size=image_size,
        width=width,
        times=times,
        pre_activation="elu",
    )
