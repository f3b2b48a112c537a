"""Reciprocal Gated Cell: the module docstring's equations, checked in numpy, and its config quirks.

The reference below (``rgc_reference``) is written from the docstring; it reads the cell's weights but
none of its code. ``test_shallow_config_matches_equations`` spells the shallow zoo cell out by hand
as a cross-check of that reference.
"""

import numpy as np
import pytest
import torch
from numpy_ref import TOL, build_cell, conv_same, elu, layer_norm, norm_params, np_, rand, randomise, sigmoid
from torch.utils._python_dispatch import TorchDispatchMode

from convrnn.cells import CellContext, RGCConfig
from convrnn.errors import SpecError
from convrnn.ops import SameConv2d, SeparableConv2d

ACT = {"elu": elu, "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": sigmoid, "identity": lambda z: z}


def apply(mod, x):
    """A regular conv (weight, optional bias) or a separable one: depthwise, pointwise, bias."""
    if isinstance(mod, SeparableConv2d):
        assert mod.depthwise0 is None
        dw = np_(mod.depthwise.weight)
        y = np.concatenate([conv_same(x[:, k : k + 1], dw[k : k + 1]) for k in range(x.shape[1])], axis=1)
        y = conv_same(y, np_(mod.pointwise.weight))
        return y if mod.bias is None else y + np_(mod.bias)[None, :, None, None]
    return conv_same(x, np_(mod.weight), None if mod.bias is None else np_(mod.bias))


def rgc_reference(cell, cfg, x, state, r=None, fb=None, resized=False):
    """One RGC step from the module docstring, on float64 numpy arrays (x, r and fb on the cell's map).

    ``resized``: r was resized from another map, so out_residual projects it even where channels match.
    """
    fb = fb or {}

    def feedback(entry):
        return ACT[cfg.feedback_activation](apply(cell.feedback[entry], fb[entry]))

    def tau_factor(z):
        return cfg.tau_offset + cfg.tau_multiplier * ACT[cfg.tau_nonlinearity](z)

    def gate_factor(z):
        return cfg.gate_offset + cfg.gate_multiplier * ACT[cfg.gate_nonlinearity](z)

    # tau_bias / gate_bias are added to regular (non-separable) tau / gate / cell_to_out convs only.
    tau_bias = 0.0 if cfg.tau_separable else cfg.tau_bias
    gate_bias = 0.0 if cfg.gate_separable else cfg.gate_bias

    if "input" in fb:
        x = x + feedback("input")
    x = ACT[cfg.input_activation](x)

    def add_ins(z, site, kind):
        """z plus the add-ins to ``site``'s (cell/out) ``kind`` (tau/gate): input_to_kind, residual_to_site_kind."""
        if getattr(cfg, f"input_to_{kind}"):
            z = z + apply(getattr(cell, f"{site}_in_{kind}"), x)
        if getattr(cfg, f"residual_to_{site}_{kind}"):
            z = z + apply(getattr(cell, f"{site}_res_{kind}"), r)
        return z

    def update(site, prev, tau, gate, inp):
        """act(LN(tau_factor(tau) prev + gate_factor(gate) inp)), with ``site``'s (cell/out) norm and activation."""
        new = tau_factor(tau) * prev + gate_factor(gate) * inp
        if cfg.layer_norm:
            new = layer_norm(new, *norm_params(getattr(cell, f"{site}_norm")))
        return ACT[getattr(cfg, f"{site}_activation")](new)

    if cfg.gate_kernel > 0:
        c, h = state
        c_in = 0.0
        if cfg.input_to_cell:
            c_in = c_in + apply(cell.cell_in, x)
        if cfg.cell_residual:
            c_in = c_in + apply(cell.cell_res, r)
        if "cell" in fb:
            c_in = c_in + feedback("cell")
        tau_c = add_ins(apply(cell.cell_tau, c) + tau_bias, "cell", "tau")
        gate_c = add_ins(apply(cell.cell_gate, h) + gate_bias, "cell", "gate")
        c_new = update("cell", c, tau_c, gate_c, c_in)
    else:
        (h,) = state
        c = None

    h_in = apply(cell.out_in, x) if cfg.input_to_out else x
    if cfg.cell_to_out:
        h_in = h_in + apply(cell.cell_to_out, c) + gate_bias
    if cfg.out_residual:
        # P: identity where channels match, else a bias-free 1x1 projection.
        project = resized or r.shape[1] != x.shape[1]
        h_in = h_in + (conv_same(r, np_(cell.out_res.proj.weight)) if project else r)
    if "out" in fb:
        h_in = h_in + feedback("out")
    tau_h = add_ins(apply(cell.out_tau, h) + tau_bias, "out", "tau")
    gate_h = 0.0 if (cfg.gate_kernel == 0 or cfg.cell_to_out) else apply(cell.out_gate, c) + gate_bias
    gate_h = add_ins(gate_h, "out", "gate")
    h_new = update("out", h, tau_h, gate_h, h_in)
    return h_new, ((c_new, h_new) if cfg.gate_kernel > 0 else (h_new,))


def build(cfg, d=2, hw=(3, 3), rc=None, fb=None):
    return build_cell(cfg, d, hw, rc, fb)


def inputs(cell, seed, batch=2, rc=None, fb=None):
    """Random x, non-zero previous state, residual r and feedback, all on the cell's map."""
    rng = np.random.default_rng(seed)
    hw = cell.hw
    x = rand(rng, batch, cell.out_channels, *hw)
    state = tuple(rand(rng, batch, ch, *hw) for ch in cell.state_channels())
    r = rand(rng, batch, rc or cell.out_channels, *hw)
    fbs = {e: rand(rng, batch, ch, *hw) for e, ch in (fb or {}).items()}
    return x, state, r, fbs


def conv1x1(conv, z):
    """A 1x1 convolution written out: W z, plus b where the conv has a bias."""
    y = np.einsum("oc,bchw->bohw", np_(conv.weight)[:, :, 0, 0], z)
    return y if conv.bias is None else y + np_(conv.bias)[:, None, None]


def no_cell_step(cell, h, h_in):
    """h_t = elu((1 - s(T h [+ b_T])) h + (1 - s(0)) h_in): a cell-less RGC (gate_kernel=0) with a 1x1 tau conv."""
    return elu((1 - sigmoid(conv1x1(cell.out_tau, h))) * h + 0.5 * h_in)


def check_step(cell, cfg, seed, rc=None, fb=None):
    x, state, r, fbs = inputs(cell, seed, rc=rc, fb=fb)
    out, new_state = cell(x, state, res=r, fb=fbs or None)
    exp_out, exp_state = rgc_reference(
        cell, cfg, np_(x), tuple(np_(s) for s in state), np_(r), {e: np_(f) for e, f in fbs.items()}
    )
    np.testing.assert_allclose(np_(out), exp_out, atol=TOL, rtol=TOL)
    assert len(new_state) == len(exp_state)
    for got, exp in zip(new_state, exp_state):
        np.testing.assert_allclose(np_(got), exp, atol=TOL, rtol=TOL)
    return out


SHALLOW = {"cell_channels": 3, "residual_to_out_gate": True, "conv_bias": False}
ONE_BY_ONE = {"tau_kernel": 1, "gate_kernel": 1, "ff_kernel": 1}  # 1x1 tau, gate and feedforward kernels


def test_shallow_config_matches_equations():
    """The shallow zoo cell written out by hand (3x3 kernels on a 3x3 map, C=3 cell channels, D=2):

    c_t = elu((1 - s(T_c*c)) c + (1 - s(G_c*h)) F*x);  h_t = elu((1 - s(T_h*h)) h + (1 - s(G_h*c + R*r)) x)
    """
    cfg = RGCConfig(**SHALLOW)
    cell = randomise(build(cfg, d=2, rc=4), 1)
    x, (c, h), r, _ = inputs(cell, 2, rc=4)
    out, (c_new, h_new) = cell(x, (c, h), res=r)
    xn, cn, hn, rn = np_(x), np_(c), np_(h), np_(r)
    W = {name: np_(getattr(cell, name).weight) for name in ("cell_in", "cell_tau", "cell_gate", "out_gate", "out_tau")}
    W["out_res_gate"] = np_(cell.out_res_gate.weight)
    for k in W.values():
        assert k.shape[-2:] == (3, 3)
    exp_c = elu(
        (1 - sigmoid(conv_same(cn, W["cell_tau"]))) * cn
        + (1 - sigmoid(conv_same(hn, W["cell_gate"]))) * conv_same(xn, W["cell_in"])
    )
    gate_h = conv_same(cn, W["out_gate"]) + conv_same(rn, W["out_res_gate"])
    exp_h = elu((1 - sigmoid(conv_same(hn, W["out_tau"]))) * hn + (1 - sigmoid(gate_h)) * xn)
    np.testing.assert_allclose(np_(c_new), exp_c, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np_(out), exp_h, atol=TOL, rtol=TOL)
    assert torch.equal(h_new, out)
    # The generic reference agrees with the hand-written one.
    check_step(cell, cfg, 2, rc=4)


def test_shallow_config_has_no_conv_biases():
    """conv_bias=False: none of the shallow cell's convolutions (regular or add-in) carries a bias."""
    cell = build(RGCConfig(**SHALLOW), d=2, rc=4)
    convs = [m for m in cell.modules() if isinstance(m, SameConv2d)]
    assert len(convs) == 6  # cell_in, cell_tau, cell_gate, out_gate, out_tau, out_res_gate
    assert all(m.bias is None for m in convs)
    assert [n for n, _ in cell.named_parameters() if "bias" in n] == []


def test_bias_rules():
    """Regular convs carry a bias iff conv_bias; separable ones always; input_to_*/residual_to_* add-ins never."""
    add_ins = ("cell_in_tau", "cell_res_tau", "cell_in_gate", "cell_res_gate")
    add_ins += ("out_in_tau", "out_res_tau", "out_in_gate", "out_res_gate")
    flags = dict(input_to_tau=True, input_to_gate=True, residual_to_cell_tau=True, residual_to_cell_gate=True)
    flags |= dict(residual_to_out_tau=True, residual_to_out_gate=True, input_to_out=True, cell_residual=True)
    regular = ("cell_in", "cell_res", "cell_tau", "cell_gate", "out_gate", "out_in", "out_tau")
    for conv_bias in (False, True):
        cell = build(RGCConfig(conv_bias=conv_bias, **flags), rc=3, fb={"out": 2})
        for name in add_ins:
            assert getattr(cell, name).bias is None, name
        for name in regular:
            assert (getattr(cell, name).bias is not None) == conv_bias, name
        assert (cell.feedback["out"].bias is not None) == conv_bias
    sep = build(RGCConfig(tau_separable=True, gate_separable=True, ff_separable=True, **flags), rc=3)
    for name in ("cell_in", "cell_res", "cell_tau", "cell_gate", "out_gate", "out_tau"):
        assert isinstance(getattr(sep, name), SeparableConv2d), name
        assert getattr(sep, name).bias is not None, name
    for name in add_ins:
        assert isinstance(getattr(sep, name), SameConv2d), name
        assert getattr(sep, name).bias is None, name


RICH = [
    # Everything regular, with biases, layer norm, all add-ins, residuals, feedback at all three entries.
    dict(
        cfg=dict(cell_channels=3, **ONE_BY_ONE, in_out_kernel=1, conv_bias=True, layer_norm=True)
        | dict(input_to_out=True, input_to_tau=True, input_to_gate=True, cell_residual=True, out_residual=True)
        | dict(residual_to_cell_tau=True, residual_to_cell_gate=True, residual_to_out_tau=True)
        | dict(tau_bias=0.3, gate_bias=-0.4, tau_nonlinearity="tanh", tau_offset=0.5, tau_multiplier=0.7)
        | dict(gate_offset=0.2, gate_multiplier=1.3)
        | dict(input_activation="relu", feedback_activation="tanh", cell_activation="tanh", out_activation="relu"),
        rc=3,
        fb={"input": 2, "cell": 1, "out": 3},
    ),
    # cell_to_out instead of gating h with c; 3x3 kernels (clamped to 2 on one axis); out_residual identity.
    dict(
        cfg=dict(cell_channels=2, cell_to_out=True, conv_bias=True, tau_bias=-0.2, gate_bias=0.6)
        | dict(out_residual=True, residual_to_out_gate=True, cell_tau_kernel=2),
        rc=2,
        fb={},
        hw=(3, 2),
    ),
    # The searched "median" style: separable tau/gate/ff/in_out convs, whose tau/gate constants are dead.
    dict(
        cfg=dict(cell_channels=3, tau_separable=True, gate_separable=True, ff_separable=True, in_out_separable=True)
        | dict(input_to_out=True, tau_bias=5.0, gate_bias=-5.0, input_to_gate=True, residual_to_cell_gate=True)
        | dict(cell_activation="relu"),
        rc=3,
        fb={"out": 2},
    ),
    # No cell (gate_kernel=0): h alone, with an input add-in to its gate.
    dict(cfg=dict(gate_kernel=0, tau_kernel=2, conv_bias=True, tau_bias=0.5, input_to_gate=True), rc=2, fb={}),
]


@pytest.mark.parametrize("case", RICH, ids=["regular-all-options", "cell_to_out", "separable", "no-cell"])
def test_configs_match_equations(case):
    """Several corners of the search space, one step each, against the docstring reference."""
    cfg = RGCConfig(**case["cfg"])
    cfg.check("w")
    hw = case.get("hw", (3, 3))
    cell = randomise(build(cfg, d=2, hw=hw, rc=case["rc"], fb=case["fb"]), 3)
    check_step(cell, cfg, 4, rc=case["rc"], fb=case["fb"])


def test_cell_residual_only_input():
    """input_to_cell=False with cell_residual=True: c_in comes from r alone (no cell_in conv)."""
    cfg = RGCConfig(cell_channels=2, input_to_cell=False, cell_residual=True, **ONE_BY_ONE)
    cfg.check("w")
    cell = build(cfg, d=2, rc=3)
    assert cell.cell_in is None
    randomise(cell, 5)
    check_step(cell, cfg, 6, rc=3)


def test_residual_from_a_larger_map_is_resized():
    """r on a 4x4 map feeding a 2x2 cell: every path reads it resized (align_corners=True, so 4 -> 2
    samples rows/columns 0 and 3 exactly), and out_residual projects it although channels match."""
    paths = dict(cell_residual=True, residual_to_cell_tau=True, residual_to_out_gate=True, out_residual=True)
    cfg = RGCConfig(cell_channels=2, **ONE_BY_ONE, **paths)
    cell = cfg.build(CellContext(in_channels=2, hw=(2, 2), res_channels=2, res_hw=(4, 4)))
    assert cell.out_res.proj is not None
    randomise(cell, 21)
    x, state, _, _ = inputs(cell, 22)
    res = rand(np.random.default_rng(23), 2, 2, 4, 4)
    out, new_state = cell(x, state, res=res)
    r_small = np_(res)[..., ::3, ::3]
    exp_out, exp_state = rgc_reference(cell, cfg, np_(x), tuple(np_(t) for t in state), r_small, resized=True)
    np.testing.assert_allclose(np_(out), exp_out, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np_(new_state[0]), exp_state[0], atol=TOL, rtol=TOL)


def _run_twins(cfg_a, cfg_b, seed):
    """Two cells with identical weights whose configs differ only in constants, one step on the same inputs."""
    a, b = build(cfg_a), build(cfg_b)
    randomise(a, 7)
    b.load_state_dict(a.state_dict())
    x, state, r, _ = inputs(a, seed)
    return a(x, state, res=r), b(x, state, res=r)


def test_separable_tau_gate_bias_have_no_effect():
    """With separable tau/gate convs, tau_bias/gate_bias change nothing, bit for bit (dead parameters)."""
    base = dict(cell_channels=2, tau_separable=True, gate_separable=True, cell_to_out=False)
    for extra in ({}, {"cell_to_out": True}):
        (out_a, st_a), (out_b, st_b) = _run_twins(
            RGCConfig(**base | extra, tau_bias=0.0, gate_bias=0.0),
            RGCConfig(**base | extra, tau_bias=3.0, gate_bias=-2.0),
            8,
        )
        assert torch.equal(out_a, out_b)
        assert all(torch.equal(p, q) for p, q in zip(st_a, st_b))


@pytest.mark.parametrize("field", ["tau_bias", "gate_bias"])
@pytest.mark.parametrize("cell_to_out", [False, True])
def test_regular_tau_gate_bias_change_the_output(field, cell_to_out):
    """With regular convs and conv_bias=True the constants are live (also via cell_to_out for gate_bias)."""
    base = dict(cell_channels=2, conv_bias=True, cell_to_out=cell_to_out)
    (out_a, _), (out_b, _) = _run_twins(RGCConfig(**base), RGCConfig(**base, **{field: 1.5}), 9)
    assert (out_a - out_b).abs().max() > 1e-3


def test_kernels_are_clamped_to_the_map():
    """tau_kernel=7 on a 3x3 map gives 3x3 kernels, per axis on a non-square map; smaller ones are kept."""
    cell = build(RGCConfig(tau_kernel=7, gate_kernel=2, ff_kernel=5), hw=(3, 3))
    assert cell.out_tau.weight.shape[-2:] == (3, 3)
    assert cell.cell_tau.weight.shape[-2:] == (3, 3)
    assert cell.cell_gate.weight.shape[-2:] == (2, 2)
    assert cell.cell_in.weight.shape[-2:] == (3, 3)
    wide = build(RGCConfig(tau_kernel=7, cell_tau_kernel=1), hw=(2, 5))
    assert wide.out_tau.weight.shape[-2:] == (2, 5)
    assert wide.cell_tau.weight.shape[-2:] == (1, 1)
    sep = build(RGCConfig(tau_kernel=7, tau_separable=True), hw=(3, 3))
    assert sep.out_tau.depthwise.weight.shape[-2:] == (3, 3)


def test_gate_kernel_zero_removes_the_cell():
    """gate_kernel=0: one state tensor (h), no cell convs, and h_t = elu((1 - s(T_h*h)) h + (1 - s(0)) x)."""
    cfg = RGCConfig(gate_kernel=0, tau_kernel=1)
    cell = build(cfg, d=2, hw=(2, 2))
    assert cell.state_channels() == (2,)
    (s0,) = cell.init_state(torch.zeros(1))
    assert s0.shape == (1, 2, 2, 2)
    assert not hasattr(cell, "cell_tau")
    assert cell.out_gate is None and cell.cell_to_out is None
    randomise(cell, 10)
    x, (h,), _, _ = inputs(cell, 11)
    out, new_state = cell(x, (h,))
    assert len(new_state) == 1
    np.testing.assert_allclose(np_(out), no_cell_step(cell, np_(h), np_(x)), atol=TOL, rtol=TOL)


def test_feedback_at_out_is_added_to_h_input():
    """Feedback at 'out' goes through a 1x1 conv with bias (conv_bias=True) into h's input:
    h_t = elu((1 - s(T h + b_T)) h + (1 - s(0)) (x + B f + b_B)), all 1x1 kernels, no cell."""
    cfg = RGCConfig(gate_kernel=0, tau_kernel=1, conv_bias=True)
    cell = build(cfg, d=2, hw=(2, 2), fb={"out": 3})
    fbconv = cell.feedback["out"]
    assert fbconv.weight.shape == (2, 3, 1, 1)
    assert fbconv.bias is not None
    randomise(cell, 12)
    x, (h,), _, fbs = inputs(cell, 13, fb={"out": 3})
    out, _ = cell(x, (h,), fb=fbs)
    expected = no_cell_step(cell, np_(h), np_(x) + conv1x1(fbconv, np_(fbs["out"])))
    np.testing.assert_allclose(np_(out), expected, atol=TOL, rtol=TOL)
    # Without the feedback the output differs: the test above sees it.
    out0, _ = cell(x, (h,))
    assert (out0 - out).abs().max() > 1e-3


def test_feedback_is_resized_to_the_cell_map():
    """Feedback from a 1x1 map is resized (bilinear, align_corners) to the cell's map: a constant map."""
    cfg = RGCConfig(gate_kernel=0, tau_kernel=1)
    cell = randomise(build(cfg, d=2, hw=(2, 2), fb={"out": 2}), 14)
    x, (h,), _, _ = inputs(cell, 15)
    f_small = torch.tensor([[[[0.7]], [[-1.2]]]]).expand(2, 2, 1, 1)
    out_small, _ = cell(x, (h,), fb={"out": f_small})
    out_full, _ = cell(x, (h,), fb={"out": f_small.expand(2, 2, 2, 2)})
    assert torch.allclose(out_small, out_full, atol=1e-6)


@pytest.mark.parametrize("rc", [2, 3])
def test_out_residual_identity_or_projection(rc):
    """out_residual adds r itself when channels match, else W r with a bias-free 1x1 W (even with conv_bias)."""
    cfg = RGCConfig(gate_kernel=0, tau_kernel=1, out_residual=True, conv_bias=True)
    cell = build(cfg, d=2, hw=(2, 2), rc=rc)
    if rc == 2:
        assert cell.out_res.proj is None
    else:
        assert cell.out_res.proj.weight.shape == (2, 3, 1, 1)
        assert cell.out_res.proj.bias is None
    randomise(cell, 16)
    x, (h,), r, _ = inputs(cell, 17, rc=rc)
    out, _ = cell(x, (h,), res=r)
    p_r = np_(r) if rc == 2 else conv1x1(cell.out_res.proj, np_(r))
    np.testing.assert_allclose(np_(out), no_cell_step(cell, np_(h), np_(x) + p_r), atol=TOL, rtol=TOL)


def test_cell_needs_an_input():
    """A cell with neither input_to_cell nor cell_residual is a spec error naming input_to_cell."""
    with pytest.raises(SpecError, match=r"w\.input_to_cell"):
        RGCConfig(input_to_cell=False, cell_residual=False).check("w")
    RGCConfig(input_to_cell=False, cell_residual=True).check("w")
    RGCConfig(input_to_cell=False, cell_residual=False, gate_kernel=0).check("w")  # no cell, no need


def test_check_rejects_bad_fields():
    with pytest.raises(SpecError, match=r"w\.gate_kernel"):
        RGCConfig(gate_kernel=-1).check("w")
    with pytest.raises(SpecError, match=r"w\.tau_nonlinearity"):
        RGCConfig(tau_nonlinearity="swish").check("w")


def test_feedback_at_cell_needs_a_cell():
    with pytest.raises(SpecError, match="cell"):
        build(RGCConfig(gate_kernel=0), fb={"cell": 2})


def test_batch_one_state_broadcasts():
    """A batch-1 (c, h) with a batch-2 input, residual and feedback equals the state expanded to batch 2."""
    cfg = RGCConfig(**RICH[0]["cfg"])
    cell = randomise(build(cfg, d=2, rc=3, fb=RICH[0]["fb"]), 18)
    x, _, r, fbs = inputs(cell, 19, rc=3, fb=RICH[0]["fb"])
    rng = np.random.default_rng(20)
    state = tuple(rand(rng, 1, ch, 3, 3) for ch in cell.state_channels())
    out_b, st_b = cell(x, state, res=r, fb=fbs)
    out_e, st_e = cell(x, tuple(s.expand(2, *s.shape[1:]).clone() for s in state), res=r, fb=fbs)
    assert all(s.shape[0] == 2 for s in st_b)
    assert torch.allclose(out_b, out_e, atol=1e-6)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(st_b, st_e))


@pytest.mark.parametrize(
    "cfg",
    [
        dict(cell_channels=3, residual_to_out_gate=True),  # the shallow zoo cell, no conv biases
        dict(cell_channels=2, conv_bias=True, cell_to_out=True, tau_bias=0.3, gate_bias=-0.2),  # biases, G_o -> input
        dict(cell_channels=3, tau_kernel=3, gate_kernel=2, conv_bias=True),  # kernels differ: T_c alone, G_c alone
    ],
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_state_convolutions_equal_separate_ones(cfg, layout):
    """With fuse_convs the fast schedule runs the two convolutions reading each state as one
    (concatenated kernels): same outputs and gradients as the separate convolutions, to float rounding."""
    cell = randomise(build(RGCConfig(**cfg), d=4, hw=(4, 4)), 31)
    assert not cell.fuse_convs  # opt-in
    cell.fuse_convs = True
    x, state, r, _ = inputs(cell, 32, batch=3)
    x, r, *state = (t.contiguous(memory_format=layout).requires_grad_() for t in (x, r, *state))
    results = []
    for fast in (False, True):
        cell.begin(fast)
        out, new = cell.update(cell.prepare(x, r), tuple(state))
        loss = out.square().sum() + sum((s * s.detach()).sum() for s in new)
        grads = torch.autograd.grad(loss, [x, r, *state, *cell.parameters()], allow_unused=True)
        results.append((out, new, grads))
    fused = cell._fused
    same_kernels = cfg.get("gate_kernel", 3) == cfg.get("tau_kernel", 3)
    assert (set(fused) == {"c", "h"}) == same_kernels and all(f.weight is not None for f in fused.values())
    (out_a, new_a, g_a), (out_b, new_b, g_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    for a, b in zip((*new_a, *g_a), (*new_b, *g_b)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_copies_drop_the_fused_weight_and_rebuild_it():
    """A cell copied after a forward pass copies the fusion's plan, not its weight (built from the
    parameters inside the autograd graph, which cannot be copied), and builds it again from its own."""
    import copy

    cell = randomise(build(RGCConfig(cell_channels=3), d=4, hw=(4, 4)), 33)
    cell.fuse_convs = True
    cell.begin(True)
    x, state, r, _ = inputs(cell, 34, batch=3)
    assert all(f.weight is None for f in cell._fused.values())  # built at first use
    cell.update(cell.prepare(x, r), state)
    assert all(f.weight is not None and f.weight.grad_fn is not None for f in cell._fused.values())
    twin = copy.deepcopy(cell)
    assert all(f.weight is None for f in twin._fused.values())
    assert twin._fused["c"].convs[0] is twin.cell_tau and twin._fused["h"].convs[0] is twin.cell_gate
    torch.testing.assert_close(
        twin.update(twin.prepare(x, r), tuple(state))[0], cell.update(cell.prepare(x, r), tuple(state))[0]
    )


class _ConvCalls(TorchDispatchMode):
    """Counts the convolutions run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten.convolution.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", RICH, ids=["regular-all-options", "cell_to_out", "separable", "no-cell"])
def test_output_alone_equals_update_without_the_cell_convolutions(case):
    """At a layer's last needed step the unroller asks for h_t alone: prepare_output + output give
    update's h_t exactly, and run none of the convolutions that only c_t reads; a full ``prepare``
    (reused from an earlier step) works in ``output`` too."""
    cfg = RGCConfig(**case["cfg"])
    cell = randomise(build(cfg, d=2, hw=case.get("hw", (3, 3)), rc=case["rc"], fb=case["fb"]), 41)
    x, state, r, fbs = inputs(cell, 42, rc=case["rc"], fb=case["fb"])
    with _ConvCalls() as full:
        h, _ = cell.update(cell.prepare(x, r, fbs or None), state)
    with _ConvCalls() as alone:
        h_alone = cell.output(cell.prepare_output(x, r, fbs or None), state)
    torch.testing.assert_close(h_alone, h, rtol=0, atol=0)
    torch.testing.assert_close(cell.output(cell.prepare(x, r, fbs or None), state), h, rtol=0, atol=0)
    # The cell's own convolutions: what reads c (T_c) or feeds c_t (F, F_r, G_c, their add-ins,
    # feedback at 'cell'); c's convolution into h (G_o or cell_to_out) stays.
    cell_only = [cell.cell_in, cell.cell_res, cell.cell_tau, cell.cell_gate] if cfg.use_cell else []
    cell_only += [cell.cell_in_tau, cell.cell_res_tau, cell.cell_in_gate, cell.cell_res_gate] if cfg.use_cell else []
    cell_only += [cell.feedback["cell"]] if "cell" in case["fb"] else []
    skipped = sum(_calls(m) for m in cell_only if m is not None)
    assert skipped > 0 if cfg.use_cell else skipped == 0
    assert alone.n == full.n - skipped


def _calls(conv: torch.nn.Module) -> int:
    """Convolution calls one application of ``conv`` makes (a separable one makes two or three)."""
    return sum(isinstance(m, SameConv2d) for m in conv.modules())
