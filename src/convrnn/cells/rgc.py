"""Reciprocal Gated Cell (RGC), with the whole search space of Nayebi et al. 2018/2022 as options.

A cell state ``c`` (depth C = ``cell_channels``) and an output state ``h`` (depth D = the input's
depth) gate each other. With ``x`` the pre-memory output, ``r`` the layer's feedforward input and
``f_e`` the feedback entering at ``e``::

    x~   = act_in( x [+ act_fb(B_in * f_input)] )
    c_in = [input_to_cell: F * x~] [+ cell_residual: F_r * r] [+ act_fb(B_c * f_cell)]
    tau_c  = T_c * c  [+ input_to_tau: * x~] [+ residual_to_cell_tau: * r]
    gate_c = G_c * h  [+ input_to_gate: * x~] [+ residual_to_cell_gate: * r]
    c_t  = act_c( (o_tau + k_tau phi_tau(tau_c)) . c + (o_gate + k_gate phi_gate(gate_c)) . c_in )

    h_in = (input_to_out ? W_io * x~ : x~) [+ cell_to_out: G_o * c] [+ out_residual: P(r)]
           [+ act_fb(B_o * f_out)]
    tau_h  = T_h * h  [+ input_to_tau: * x~] [+ residual_to_out_tau: * r]
    gate_h = (cell_to_out ? 0 : G_h * c) [+ input_to_gate: * x~] [+ residual_to_out_gate: * r]
    h_t  = act_h( (o_tau + k_tau phi_tau(tau_h)) . h + (o_gate + k_gate phi_gate(gate_h)) . h_in )

All gates read the states of step t-1. ``*`` is a stride-1 SAME convolution, depthwise-separable
(depthwise kxk + pointwise 1x1 + bias) where its ``*_separable`` flag says so; its kernel is clamped to
the feature-map size, as the reference does. ``P`` is the identity, or a bias-free 1x1 projection
where channels differ (after a bilinear resize where the map differs). ``gate_kernel=0`` removes the
cell (only ``h`` remains). ``layer_norm`` normalises c_t and h_t before their activations.

Biases, as the reference: regular convolutions carry a bias iff ``conv_bias`` (off in the shallow
zoo cell, whose convolutions have none; on in the searched "median" cell); separable ones always
carry one; the ``input_to_*``/``residual_to_*`` add-in convolutions never do. The constants
``tau_bias``/``gate_bias`` are added to *regular* tau/gate (and cell_to_out) convolutions only, so
with separable ones (the median cell) they have no effect: the reference's dead parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from convrnn.cells.base import Cell, CellConfig, CellContext, State, positive
from convrnn.errors import SpecError
from convrnn.ops import FusedConv, ResidualAdd, TFLayerNorm, activation, fusable, make_conv, resize_to

_ACTIVATION_FIELDS = (
    "tau_nonlinearity",
    "gate_nonlinearity",
    "input_activation",
    "feedback_activation",
    "cell_activation",
    "out_activation",
)


@dataclass
class RGCConfig(CellConfig):
    type = "rgc"
    takes_feedback = True

    cell_channels: int | None = None
    tau_kernel: int = 3
    gate_kernel: int = 3
    ff_kernel: int = 3
    in_out_kernel: int = 3
    feedback_kernel: int = 1
    cell_tau_kernel: int | None = None
    tau_separable: bool = False
    gate_separable: bool = False
    ff_separable: bool = False
    in_out_separable: bool = False
    feedback_separable: bool = False
    ds_repeat: bool = False
    tau_nonlinearity: str = "sigmoid"
    gate_nonlinearity: str = "sigmoid"
    tau_offset: float = 1.0
    tau_multiplier: float = -1.0
    gate_offset: float = 1.0
    gate_multiplier: float = -1.0
    tau_bias: float = 0.0
    gate_bias: float = 0.0
    input_activation: str = "identity"
    feedback_activation: str = "identity"
    cell_activation: str = "elu"
    out_activation: str = "elu"
    input_to_cell: bool = True
    input_to_out: bool = False
    cell_to_out: bool = False
    cell_residual: bool = False
    out_residual: bool = False
    residual_to_cell_tau: bool = False
    residual_to_cell_gate: bool = False
    residual_to_out_tau: bool = False
    residual_to_out_gate: bool = False
    input_to_tau: bool = False
    input_to_gate: bool = False
    conv_bias: bool = False
    layer_norm: bool = False

    def check(self, where: str) -> None:
        positive(
            where,
            cell_channels=self.cell_channels,
            tau_kernel=self.tau_kernel,
            ff_kernel=self.ff_kernel,
            in_out_kernel=self.in_out_kernel,
            feedback_kernel=self.feedback_kernel,
            cell_tau_kernel=self.cell_tau_kernel,
        )
        if self.gate_kernel < 0:
            raise SpecError(f"{where}.gate_kernel: must be >= 0 (0 removes the cell), got {self.gate_kernel}")
        for name in _ACTIVATION_FIELDS:
            try:
                activation(getattr(self, name))
            except ValueError as e:
                raise SpecError(f"{where}.{name}: {e}") from None
        if self.use_cell and not (self.input_to_cell or self.cell_residual):
            raise SpecError(f"{where}.input_to_cell: the cell needs an input (input_to_cell or cell_residual)")

    @property
    def use_cell(self) -> bool:
        return self.gate_kernel > 0

    def build(self, ctx: CellContext) -> Cell:
        return RGCCell(self, ctx)


class RGCCell(Cell):
    def __init__(self, cfg: RGCConfig, ctx: CellContext) -> None:
        super().__init__(ctx)
        self.cfg = cfg
        d = ctx.in_channels
        cc = cfg.cell_channels or d
        self.out_channels, self.cell_channels = d, cc
        hw, rc = ctx.hw, ctx.res_channels
        bias = cfg.conv_bias

        def conv(cin: int, cout: int, k: int, separable: bool, add_in: bool = False) -> nn.Module:
            return make_conv(
                cin, cout, k, hw, separable=separable, bias=(separable or bias) and not add_in, repeat=cfg.ds_repeat
            )

        self.tau_act = activation(cfg.tau_nonlinearity)
        self.gate_act = activation(cfg.gate_nonlinearity)
        self.in_act = activation(cfg.input_activation)
        self.fb_act = activation(cfg.feedback_activation)
        self.cell_act = activation(cfg.cell_activation)
        self.out_act = activation(cfg.out_activation)
        # Constants added to regular tau/gate convolutions (see the module docstring).
        self.tau_const = 0.0 if cfg.tau_separable else cfg.tau_bias
        self.gate_const = 0.0 if cfg.gate_separable else cfg.gate_bias

        fb = ctx.fb_channels
        fb_out = {"input": d, "cell": cc, "out": d}
        self.feedback = nn.ModuleDict(
            {e: conv(c, fb_out[e], cfg.feedback_kernel, cfg.feedback_separable) for e, c in fb.items()}
        )
        if "cell" in fb and not cfg.use_cell:
            raise SpecError("feedback enters at 'cell' but the RGC has no cell (gate_kernel=0)")

        ctk = cfg.cell_tau_kernel or cfg.tau_kernel
        if cfg.use_cell:
            self.cell_in = conv(d, cc, cfg.ff_kernel, cfg.ff_separable) if cfg.input_to_cell else None
            self.cell_res = conv(rc, cc, cfg.ff_kernel, cfg.ff_separable) if cfg.cell_residual else None
            self.cell_tau = conv(cc, cc, ctk, cfg.tau_separable)
            self.cell_gate = conv(d, cc, cfg.gate_kernel, cfg.gate_separable)
            self.cell_in_tau = conv(d, cc, ctk, False, add_in=True) if cfg.input_to_tau else None
            self.cell_res_tau = conv(rc, cc, ctk, False, add_in=True) if cfg.residual_to_cell_tau else None
            self.cell_in_gate = conv(d, cc, cfg.gate_kernel, False, add_in=True) if cfg.input_to_gate else None
            self.cell_res_gate = (
                conv(rc, cc, cfg.gate_kernel, False, add_in=True) if cfg.residual_to_cell_gate else None
            )
            self.cell_norm = TFLayerNorm(cc) if cfg.layer_norm else None
            # cell_to_out feeds c into h's input instead of gating h with it.
            self.out_gate = None if cfg.cell_to_out else conv(cc, d, cfg.gate_kernel, cfg.gate_separable)
            self.cell_to_out = conv(cc, d, cfg.gate_kernel, cfg.gate_separable) if cfg.cell_to_out else None
        else:
            self.out_gate = self.cell_to_out = None
        self.out_in = conv(d, d, cfg.in_out_kernel, cfg.in_out_separable) if cfg.input_to_out else None
        self.out_res = ResidualAdd(rc, d, resize=ctx.res_hw not in (None, hw)) if cfg.out_residual else None
        self.out_tau = conv(d, d, cfg.tau_kernel, cfg.tau_separable)
        self.out_in_tau = conv(d, d, cfg.tau_kernel, False, add_in=True) if cfg.input_to_tau else None
        self.out_res_tau = conv(rc, d, cfg.tau_kernel, False, add_in=True) if cfg.residual_to_out_tau else None
        gk = cfg.gate_kernel or cfg.tau_kernel
        self.out_in_gate = conv(d, d, gk, False, add_in=True) if cfg.input_to_gate else None
        self.out_res_gate = conv(rc, d, gk, False, add_in=True) if cfg.residual_to_out_gate else None
        self.out_norm = TFLayerNorm(d) if cfg.layer_norm else None

        self._fused: dict[str, FusedConv] = {}
        # Measured 1.00x (1 thread) and 1.02x (2 threads) the separate convolutions in an
        # rgc_shallow train step on a 2-core CPU (channels-last, 15 interleaved rounds; 0.98x-1.04x
        # before each layer's last step ran its convolutions separately): off unless asked for.
        self.fuse_convs = False

    def state_channels(self) -> tuple[int, ...]:
        return (self.cell_channels, self.out_channels) if self.cfg.use_cell else (self.out_channels,)

    def begin(self, fast: bool) -> None:
        # With fuse_convs, under the fast schedule, the two convolutions reading c (T_c, and G_o or
        # cell_to_out) run as one, and so do the two reading h (G_c, T_h), where their geometries
        # agree: fewer, larger convolutions (fewer kernel launches on a GPU).
        self._fused = {}
        # Compiled, the update keeps separate convolutions: the graph would otherwise depend on
        # whether the concatenated kernels exist yet.
        if fast and self.fuse_convs and self.cfg.use_cell and not self.compiled:
            for state, convs in (
                ("c", [self.cell_tau, self.out_gate or self.cell_to_out]),
                ("h", [self.cell_gate, self.out_tau]),
            ):
                if fusable(convs):
                    self._fused[state] = FusedConv(convs)

    def _fb(self, fb: dict[str, Tensor] | None, entry: str) -> Tensor | None:
        if not fb or entry not in fb:
            return None
        return self.fb_act(self.feedback[entry](resize_to(fb[entry], self.hw)))

    def prepare(self, x: Tensor, res: Tensor | None = None, fb: dict[str, Tensor] | None = None) -> _Inputs:
        """Everything that reads only x, r and the feedback: reused while they repeat."""
        return self._prepare(x, res, fb, cell=True)

    def prepare_output(self, x: Tensor, res: Tensor | None = None, fb: dict[str, Tensor] | None = None) -> _Inputs:
        """``prepare`` without the cell's input terms (c_in and the add-ins to its gates)."""
        return self._prepare(x, res, fb, cell=False)

    def _prepare(self, x: Tensor, res: Tensor | None, fb: dict[str, Tensor] | None, cell: bool) -> _Inputs:
        # Add-in convolutions read r on the cell's map; ResidualAdd resizes (and projects) by itself.
        r = resize_to(res, self.hw) if res is not None else None
        f = self._fb(fb, "input")
        if f is not None:
            x = x + f
        x = self.in_act(x)
        # The fused convolutions travel with the inputs: a step recomputed for activation
        # checkpointing (after another unroll may have begun) runs exactly as it first ran.
        p = _Inputs(fused=self._fused)
        if self.cfg.use_cell and cell:
            terms = []
            if self.cell_res is not None:
                terms.append(self.cell_res(r))
            if self.cell_in is not None:
                terms.append(self.cell_in(x))
            f = self._fb(fb, "cell")
            if f is not None:
                terms.append(f)
            p.c_in = _sum(terms)
            p.tau_c = _add_ins(None, (self.cell_in_tau, x), (self.cell_res_tau, r))
            p.gate_c = _add_ins(None, (self.cell_in_gate, x), (self.cell_res_gate, r))
        h_in = self.out_in(x) if self.out_in is not None else x
        if self.out_res is not None:
            h_in = self.out_res(h_in, res)
        f = self._fb(fb, "out")
        p.h_in = h_in if f is None else h_in + f
        p.tau_h = _add_ins(None, (self.out_in_tau, x), (self.out_res_tau, r))
        p.gate_h = _add_ins(None, (self.out_in_gate, x), (self.out_res_gate, r))
        return p

    def update(self, p: _Inputs, state: State) -> tuple[Tensor, State]:
        h_new, c_new = self._update(p, state, cell=True)
        return h_new, ((c_new, h_new) if self.cfg.use_cell else (h_new,))

    def output(self, p: _Inputs, state: State) -> Tensor:
        """h_t alone: c_t and the convolutions only it reads (T_c, G_c; F and the add-ins in
        ``prepare_output``) are skipped."""
        return self._update(p, state, cell=False)[0]

    def _update(self, p: _Inputs, state: State, cell: bool) -> tuple[Tensor, Tensor | None]:
        cfg = self.cfg
        c_new = None
        if cfg.use_cell and not cell:
            c, h = state
            c_out = (self.out_gate or self.cell_to_out)(c)
            tau_h = self.out_tau(h)
        elif cfg.use_cell:
            c, h = state
            # Every convolution of a state reads the states of step t-1.
            c_to_out = self.out_gate or self.cell_to_out
            fused = p.fused
            tau_c, c_out = fused["c"](c) if "c" in fused else (self.cell_tau(c), c_to_out(c))
            gate_c, tau_h = fused["h"](h) if "h" in fused else (self.cell_gate(h), self.out_tau(h))
            tau = _plus(tau_c, self.tau_const)
            gate = _plus(gate_c, self.gate_const)
            tau = tau if p.tau_c is None else tau + p.tau_c
            gate = gate if p.gate_c is None else gate + p.gate_c
            c_new = (cfg.tau_offset + cfg.tau_multiplier * self.tau_act(tau)) * c + (
                cfg.gate_offset + cfg.gate_multiplier * self.gate_act(gate)
            ) * p.c_in
            if self.cell_norm is not None:
                c_new = self.cell_norm(c_new)
            c_new = self.cell_act(c_new)
        else:
            (h,) = state
            tau_h, c_out = self.out_tau(h), None
        h_in = p.h_in
        if self.cell_to_out is not None:
            h_in = h_in + _plus(c_out, self.gate_const)
        tau = _plus(tau_h, self.tau_const)
        tau = tau if p.tau_h is None else tau + p.tau_h
        gate = _plus(c_out, self.gate_const) if self.out_gate is not None else None
        if p.gate_h is not None:
            gate = p.gate_h if gate is None else gate + p.gate_h
        if gate is None:  # no cell and no add-ins: the gate's pre-activation is 0
            gate = h_in.new_zeros(())
        h_new = (cfg.tau_offset + cfg.tau_multiplier * self.tau_act(tau)) * h + (
            cfg.gate_offset + cfg.gate_multiplier * self.gate_act(gate)
        ) * h_in
        if self.out_norm is not None:
            h_new = self.out_norm(h_new)
        h_new = self.out_act(h_new)
        return h_new, c_new


@dataclass
class _Inputs:
    """The input-only terms of an RGC step."""

    fused: dict[str, FusedConv] = field(default_factory=dict)
    c_in: Tensor | None = None
    tau_c: Tensor | None = None
    gate_c: Tensor | None = None
    h_in: Tensor | None = None
    tau_h: Tensor | None = None
    gate_h: Tensor | None = None


def _plus(t: Tensor, k: float) -> Tensor:
    return t + k if k else t


def _sum(terms: list[Tensor]) -> Tensor:
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _add_ins(base: Tensor | None, *pairs: tuple[nn.Module | None, Tensor | None]) -> Tensor | None:
    for conv, inp in pairs:
        if conv is not None:
            base = conv(inp) if base is None else base + conv(inp)
    return base
