"""The interface every recurrent cell shares.

A cell is built from a typed config (a dataclass that round-trips through the model spec) and a
:class:`CellContext` that tells it the shapes around it. At every step it maps

    (x, state, res, fb) -> (out, new_state)

in two parts: ``prepare(x, res, fb)``, the terms that read only the inputs (the unroller reuses them
while a layer's inputs repeat, e.g. a still image shown for several steps), and
``update(prepared, state)``, the recurrence itself. ``forward`` runs both.
At a layer's last needed step (nothing reads its state afterwards) the unroller calls
``prepare_output`` and ``output`` instead, which by default are ``prepare`` and ``update``'s output;
cells whose state costs work the output does not need (the RGC's cell ``c``) skip it there.

where ``x`` is the pre-memory output, ``state`` a tuple of tensors (empty for stateless cells),
``res`` the layer's feedforward input (for residual paths) and ``fb`` a dict from entry point
(``input``/``cell``/``out``) to the concatenated non-feedforward inputs. ``init_state`` gives the zero
state with a batch of 1; the unroller broadcasts it. A state entry of ``None`` stands for zeros of
the input's shape (used by the time-decay memory, which also serves (B, C) readouts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from convrnn.errors import SpecError

State = tuple[Tensor, ...]


@dataclass
class CellContext:
    """Shapes around a cell: channels of ``x``, the map it runs on, its residual and feedback inputs."""

    in_channels: int
    hw: tuple[int, int]
    res_channels: int
    fb_channels: dict[str, int] = field(default_factory=dict)
    res_hw: tuple[int, int] | None = None


@dataclass
class CellConfig:
    """Base of every cell config; subclasses set ``type`` and add their own fields."""

    type: ClassVar[str] = ""
    takes_feedback: ClassVar[bool] = False

    def check(self, where: str) -> None:
        """Validate fields that need no context; raise :class:`SpecError` naming ``where.field``."""

    def output_channels(self, in_channels: int) -> int:
        """Depth of the cell's output given the depth of ``x``."""
        return getattr(self, "out_channels", None) or in_channels

    def check_context(self, ctx: CellContext, where: str) -> None:
        """Validate against the surrounding shapes (e.g. channels that cannot work)."""
        if ctx.fb_channels and not self.takes_feedback:
            raise SpecError(f"{where}: cell {self.type!r} takes no feedback input")

    def build(self, ctx: CellContext) -> Cell:
        raise NotImplementedError


def positive(where: str, **values: int) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            raise SpecError(f"{where}.{name}: must be positive, got {v}")


class Cell(nn.Module):
    """A recurrent cell: ``forward(x, state, res=None, fb=None) -> (out, new_state)``."""

    out_channels: int
    # Whether ``update`` does enough work (convolutions, gates) to be worth a torch.compile.
    worth_compiling: ClassVar[bool] = True

    def __init__(self, ctx: CellContext) -> None:
        super().__init__()
        self.hw = ctx.hw
        # Set by ConvRNN.compile_steps: shortcuts that would change the compiled graph are off.
        self.compiled = False

    def state_channels(self) -> tuple[int, ...]:
        """Channels of each state tensor (zeros of shape (1, C, H, W) at t=0)."""
        return ()

    def init_state(self, like: Tensor) -> State:
        h, w = self.hw
        return tuple(like.new_zeros(1, c, h, w) for c in self.state_channels())

    def begin(self, fast: bool) -> None:
        """Called once before each unroll (e.g. to read frozen values once, not at every step).

        ``fast`` allows shortcuts that give the same numbers with less work.
        """

    def prepare(self, x: Tensor, res: Tensor | None = None, fb: dict[str, Tensor] | None = None) -> Any:
        """The stateless part of a step: terms that read only the inputs."""
        return x, res, fb

    def update(self, prepared: Any, state: State) -> tuple[Tensor, State]:
        """The recurrence: ``(prepared inputs, state at t-1) -> (out, state at t)``."""
        raise NotImplementedError

    def prepare_output(self, x: Tensor, res: Tensor | None = None, fb: dict[str, Tensor] | None = None) -> Any:
        """``prepare`` for a step whose new state will not be read (see :meth:`output`): cells may
        leave out the terms only the state needs. Whatever ``prepare`` returns must also work in
        :meth:`output` (a reused ``prepare`` result meets it there)."""
        return self.prepare(x, res, fb)

    def output(self, prepared: Any, state: State) -> Tensor:
        """The output alone, at a layer's last needed step: the new state will not be read, so
        cells may skip the work only the state needs (the RGC's cell update)."""
        return self.update(prepared, state)[0]

    def forward(
        self, x: Tensor, state: State, res: Tensor | None = None, fb: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, State]:
        return self.update(self.prepare(x, res, fb), state)
