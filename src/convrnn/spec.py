"""The temporal graph as data: typed dataclasses for a ConvRNN architecture.

A :class:`ModelSpec` is a list of layers and a list of edges. Each layer runs four stages, as the
reference implementation does (Nayebi et al. 2018, 2022)::

    harbor (combine inputs) -> pre (ops) -> cell (recurrent memory) -> post (ops)

Edges connect layers. Every layer except the first has exactly one ``feedforward`` input; the first
layer reads the stimulus. ``skip`` edges run forward past the next layer, ``feedback`` edges run from
deeper to shallower layers. Every edge costs one time step under biological unrolling.

Specs round-trip through plain dicts, JSON and YAML, and :meth:`ModelSpec.validate` rejects bad graphs
with an error that names the offending field (``edges[2].source: unknown layer 'conv11'``).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from convrnn.cells import CELL_CONFIGS, CellConfig, IdentityConfig
from convrnn.errors import SpecError
from convrnn.ops import ACTIVATIONS
from convrnn.serialize import TAGGED, from_data, to_data

__all__ = [
    "Activation",
    "Conv",
    "EdgeSpec",
    "GlobalAvgPool",
    "LayerSpec",
    "Linear",
    "MaxPool",
    "ModelSpec",
    "Op",
    "PresentationSpec",
    "ReadoutSpec",
    "Residual",
    "SpecError",
]


# ----------------------------------------------------------------------------------------------
# Ops of the pre- and post-memory stages
# ----------------------------------------------------------------------------------------------


@dataclass
class Conv:
    """2-D convolution with TensorFlow padding semantics.

    ``padding="same"`` pads ``max((ceil(n/s)-1)*s + k - n, 0)`` in total, the smaller half before
    (so a 7x7/2 conv on an even map pads 2 before and 3 after, as TF does). ``clamp_kernel`` shrinks
    the kernel to the input map where the map is smaller (the reference clamps its RGC kernels this
    way; the zoo uses it for the shallow readout so tiny images still build).
    """

    op: ClassVar[str] = "conv"
    out_channels: int
    kernel: int = 3
    stride: int = 1
    padding: Literal["same", "valid"] = "same"
    bias: bool = True
    activation: str | None = None
    batch_norm: bool = False
    clamp_kernel: bool = False


@dataclass
class MaxPool:
    """Max pooling with TF "SAME" padding (padded positions never win)."""

    op: ClassVar[str] = "maxpool"
    kernel: int = 2
    stride: int = 2


@dataclass
class GlobalAvgPool:
    """Average over the spatial dimensions: (B, C, H, W) -> (B, C)."""

    op: ClassVar[str] = "gap"


@dataclass
class Linear:
    """Fully connected layer on a (B, C) input."""

    op: ClassVar[str] = "fc"
    out_features: int
    bias: bool = True


@dataclass
class Activation:
    """Pointwise nonlinearity by name (``elu``, ``relu``, ``tanh``, ``sigmoid``, ``identity``)."""

    op: ClassVar[str] = "act"
    fn: str = "elu"


@dataclass
class Residual:
    """Add the layer's feedforward input.

    Shapes equal: plain addition. Channels differ: a bias-free 1x1 projection. Spatial size differs:
    bilinear resize (``align_corners=True``) then the projection, as the reference's ``residual_add``.
    """

    op: ClassVar[str] = "residual"


Op = Conv | MaxPool | GlobalAvgPool | Linear | Activation | Residual
OPS: dict[str, type] = {c.op: c for c in (Conv, MaxPool, GlobalAvgPool, Linear, Activation, Residual)}
TAGGED.append(
    (
        lambda tp: tp is Op or (typing.get_origin(tp) in (Union, types.UnionType) and Conv in typing.get_args(tp)),
        "op",
        OPS,
    )
)
TAGGED.append((lambda tp: tp is CellConfig, "type", CELL_CONFIGS))


# ----------------------------------------------------------------------------------------------
# Graph
# ----------------------------------------------------------------------------------------------


@dataclass
class LayerSpec:
    """One area of the network: harbor -> pre ops -> cell -> post ops."""

    name: str
    pre: list[Op] = field(default_factory=list)
    cell: CellConfig = field(default_factory=IdentityConfig)
    post: list[Op] = field(default_factory=list)


EdgeKind = Literal["feedforward", "feedback", "skip"]
Entry = Literal["input", "cell", "out"]


@dataclass
class EdgeSpec:
    """A connection ``source -> target``.

    ``entry`` says where a non-feedforward input enters the target: ``input`` concatenates it with
    the feedforward input before the pre-memory ops (cells without a feedback path), or, for cells
    that take feedback (the RGC), adds it to the cell's input; ``cell`` and ``out`` feed the RGC's
    cell or output update.
    """

    source: str
    target: str
    kind: EdgeKind = "feedforward"
    entry: Entry = "input"


@dataclass
class ReadoutSpec:
    """Which layer gives the logits and how logits over time become one prediction.

    decoder: ``last`` (the last step), ``avg`` (mean of the logits over ``window``), ``max_conf`` (per
    example, the step whose softmax peaks highest), ``threshold`` (the first step whose max softmax
    probability reaches ``threshold``, else the most confident step); see :mod:`convrnn.readout`.
    ``window`` = [start, end) of the steps considered (default: the reference's ``[num_layers, T)``,
    one step after the stimulus can first reach the readout). ``beta`` is the confidence softmax's
    temperature; ``trainable`` makes it (and the threshold) a parameter, as in the ``tmaxconf`` models.
    """

    layer: str = "imnetds"
    decoder: Literal["last", "avg", "max_conf", "threshold"] = "last"
    window: tuple[int, int] | None = None
    threshold: float = 0.9
    beta: float = 1.0
    trainable: bool = False


@dataclass
class PresentationSpec:
    """How a still image is turned into a stimulus sequence (see :mod:`convrnn.data.presentation`).

    ``default``: the image for steps ``0 .. image_off-1``, then the blank. ``neural``: 26 steps, image
    off after step 10 (100 ms of 260 ms). ``constant``: the image at every step. The blank is the
    constant ``blank`` in *normalised* units, as the reference feeds it.
    """

    kind: Literal["default", "neural", "constant"] = "default"
    image_off: int = 12
    blank: float = 0.5


@dataclass
class ModelSpec:
    """A whole ConvRNN: layers, edges, readout, input size, default steps and presentation."""

    name: str
    layers: list[LayerSpec]
    edges: list[EdgeSpec]
    readout: ReadoutSpec = field(default_factory=ReadoutSpec)
    image_size: int = 224
    in_channels: int = 3
    times: int = 16
    presentation: PresentationSpec = field(default_factory=PresentationSpec)
    step_ms: float = 10.0
    areas: dict[str, list[str]] = field(default_factory=dict)

    # --- derived views -------------------------------------------------------------------------
    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in {self.name!r}")

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def inputs_of(self, name: str) -> list[EdgeSpec]:
        return [e for e in self.edges if e.target == name]

    def feedforward_input(self, name: str) -> str | None:
        for e in self.edges:
            if e.target == name and e.kind == "feedforward":
                return e.source
        return None

    # --- validation ----------------------------------------------------------------------------
    def validate(self) -> ModelSpec:
        """Check the graph; raise :class:`SpecError` naming the first offending field."""
        if not self.layers:
            raise SpecError("layers: a model needs at least one layer")
        names = self.layer_names
        seen: set[str] = set()
        for i, layer in enumerate(self.layers):
            if not layer.name:
                raise SpecError(f"layers[{i}].name: empty layer name")
            if layer.name in seen:
                raise SpecError(f"layers[{i}].name: duplicate layer name {layer.name!r}")
            seen.add(layer.name)
            for stage in ("pre", "post"):
                for j, op in enumerate(getattr(layer, stage)):
                    where = f"layers[{i}].{stage}[{j}]"
                    fn = getattr(op, "activation", None) if isinstance(op, Conv) else getattr(op, "fn", None)
                    if fn is not None and fn not in ACTIVATIONS:
                        raise SpecError(f"{where}: unknown activation {fn!r} (known: {', '.join(ACTIVATIONS)})")
            layer.cell.check(f"layers[{i}].cell")
        pairs: set[tuple[str, str]] = set()
        ff_in: dict[str, str] = {}
        for i, e in enumerate(self.edges):
            for end in ("source", "target"):
                if getattr(e, end) not in seen:
                    raise SpecError(f"edges[{i}].{end}: unknown layer {getattr(e, end)!r}")
            if e.source == e.target:
                raise SpecError(f"edges[{i}]: self-edge on {e.source!r} (a cell's state is its own recurrence)")
            if (e.source, e.target) in pairs:
                raise SpecError(f"edges[{i}]: duplicate edge {e.source}->{e.target}")
            pairs.add((e.source, e.target))
            if e.kind == "feedforward":
                if e.target in ff_in:
                    raise SpecError(
                        f"edges[{i}]: {e.target!r} already has feedforward input {ff_in[e.target]!r}; "
                        "mark extra inputs as 'skip' or 'feedback'"
                    )
                ff_in[e.target] = e.source
                if e.entry != "input":
                    raise SpecError(f"edges[{i}].entry: a feedforward edge enters at 'input', not {e.entry!r}")
        first = names[0]
        if first in ff_in:
            raise SpecError(f"layers[0]: the first layer {first!r} reads the stimulus and takes no feedforward edge")
        for i, name in enumerate(names[1:], start=1):
            if name not in ff_in:
                raise SpecError(f"layers[{i}]: {name!r} has no feedforward input edge")
        # The feedforward edges must form a tree rooted at the first layer: walk each chain up.
        depth = self._ff_depths(ff_in, first)
        for i, e in enumerate(self.edges):
            if e.kind == "feedback" and depth[e.source] <= depth[e.target]:
                raise SpecError(
                    f"edges[{i}].kind: {e.source}->{e.target} runs forward "
                    f"(depth {depth[e.source]} -> {depth[e.target]}); call it 'skip'"
                )
            if e.kind == "skip" and depth[e.source] >= depth[e.target]:
                raise SpecError(
                    f"edges[{i}].kind: {e.source}->{e.target} runs backward "
                    f"(depth {depth[e.source]} -> {depth[e.target]}); call it 'feedback'"
                )
            if e.kind != "feedforward":
                cell = self.layer(e.target).cell
                if e.entry != "input" and not cell.takes_feedback:
                    raise SpecError(
                        f"edges[{i}].entry: {e.entry!r} needs a cell that takes feedback, "
                        f"but {e.target!r} has cell {cell.type!r}"
                    )
        if self.readout.layer not in seen:
            raise SpecError(f"readout.layer: unknown layer {self.readout.layer!r}")
        if self.readout.window is not None:
            a, b = self.readout.window
            if not 0 <= a < b:
                raise SpecError(f"readout.window: need 0 <= start < end, got {self.readout.window}")
        if not 0.0 < self.readout.threshold <= 1.0:
            raise SpecError(f"readout.threshold: must be in (0, 1], got {self.readout.threshold}")
        for area, layers in self.areas.items():
            for j, name in enumerate(layers):
                if name not in seen:
                    raise SpecError(f"areas.{area}[{j}]: unknown layer {name!r}")
        if self.image_size < 1:
            raise SpecError(f"image_size: must be positive, got {self.image_size}")
        if self.times < 1:
            raise SpecError(f"times: must be positive, got {self.times}")
        if self.presentation.image_off < 0:
            raise SpecError(f"presentation.image_off: must be >= 0, got {self.presentation.image_off}")
        return self

    @staticmethod
    def _ff_depths(ff_in: dict[str, str], first: str) -> dict[str, int]:
        depth: dict[str, int] = {first: 0}
        for start in ff_in:
            chain, node = [], start
            while node not in depth:
                if node in chain:
                    cycle = " -> ".join([*chain[chain.index(node) :], node])
                    raise SpecError(f"edges: feedforward cycle {cycle}")
                chain.append(node)
                node = ff_in[node]
            for k, n in enumerate(reversed(chain), start=1):
                depth[n] = depth[node] + k
        return depth

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return from_data(cls, data, "spec")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ModelSpec:
        import yaml

        return cls.from_dict(yaml.safe_load(text))

    def save(self, path: str | Path) -> None:
        """Write YAML (``.yaml``/``.yml``) or JSON, atomically (temporary name, then rename)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        text = path.read_text()
        spec = cls.from_yaml(text) if path.suffix in (".yaml", ".yml") else cls.from_json(text)
        return spec.validate()
