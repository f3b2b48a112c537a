"""Convolutional LSTM: one step against the docstring equations, computed in numpy.

    [i, j, f, o] = W * [x, h] + b
    c_t = c . sigmoid(f + forget_bias + w_f . c) + sigmoid(i + w_i . c) . tanh(j)
    h_t = tanh(c_t) . sigmoid(o + w_o . c)          (c = c_{t-1} in every peephole)

With layer_norm, i, j, f, o are normalised before the update and c_t after it; the state is (c_t, h_t).
"""

import numpy as np
import pytest
import torch
from numpy_ref import TOL, cell_builder, conv_same, layer_norm, norm_params, np_, rand, randomise, rands, sigmoid

from convrnn.cells import LSTMConfig

build = cell_builder(LSTMConfig)


def reference(cell, x, c, h, forget_bias=1.0, peep=None, norms=None):
    """The docstring equations. peep = (w_f, w_i, w_o); norms = 5 (gamma, beta): i, j, f, o, state.

    Returns (h_t, c_t, c_t before its layer norm).
    """
    n = c.shape[1]
    z = conv_same(np.concatenate([x, h], 1), np_(cell.conv.weight), np_(cell.conv.bias))
    i, j, f, o = (z[:, k * n : (k + 1) * n] for k in range(4))
    if norms:
        i, j, f, o = (layer_norm(g, *nb) for g, nb in zip((i, j, f, o), norms[:4]))
    if peep:
        w_f, w_i, w_o = (w[None] for w in peep)
        f, i, o = f + w_f * c, i + w_i * c, o + w_o * c
    c_raw = c * sigmoid(f + forget_bias) + sigmoid(i) * np.tanh(j)
    c_new = layer_norm(c_raw, *norms[4]) if norms else c_raw
    return np.tanh(c_new) * sigmoid(o), c_new, c_raw


@pytest.mark.parametrize(("kernel", "hw"), [(1, (2, 2)), (3, (3, 3)), (2, (3, 2))])
def test_step_matches_equations(kernel, hw):
    """Plain LSTM (no peepholes, no norm): output h_t and state (c_t, h_t)."""
    cell = randomise(build(kernel=kernel, hw=hw), kernel)
    x, c, h = rands(50 + kernel, (2, 3, *hw), (2, 2, *hw), (2, 2, *hw))
    out, (c_new, h_new) = cell(x, (c, h))
    exp_h, exp_c, _ = reference(cell, np_(x), np_(c), np_(h))
    np.testing.assert_allclose(np_(out), exp_h, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np_(c_new), exp_c, atol=TOL, rtol=TOL)
    assert torch.equal(h_new, out)


def test_step_with_peepholes_and_layer_norm_matches_equations():
    """Everything on, with a non-default forget bias; 3x3 kernel on a 3x3 map."""
    cell = randomise(build(kernel=3, hw=(3, 3), peepholes=True, layer_norm=True, forget_bias=0.4), 11)
    x, c, h = rands(12, (2, 3, 3, 3), (2, 2, 3, 3), (2, 2, 3, 3))
    out, (c_new, _) = cell(x, (c, h))
    peep = (np_(cell.w_f), np_(cell.w_i), np_(cell.w_o))
    norms = [norm_params(n) for n in cell.norms]
    exp_h, exp_c, _ = reference(cell, np_(x), np_(c), np_(h), 0.4, peep, norms)
    np.testing.assert_allclose(np_(out), exp_h, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np_(c_new), exp_c, atol=TOL, rtol=TOL)


def test_output_gate_peeks_at_previous_cell_state():
    """o uses w_o . c_{t-1}, not w_o . c_t (the reference's quirk); the two differ clearly here."""
    cell = randomise(build(peepholes=True), 13)
    with torch.no_grad():
        cell.w_o.fill_(2.0)
    rng = np.random.default_rng(14)
    x, c, h = rand(rng, 1, 3, 2, 2), 2 * rand(rng, 1, 2, 2, 2), rand(rng, 1, 2, 2, 2)
    out, (c_new, _) = cell(x, (c, h))
    exp_h, exp_c, _ = reference(cell, np_(x), np_(c), np_(h), peep=(np_(cell.w_f), np_(cell.w_i), np_(cell.w_o)))
    np.testing.assert_allclose(np_(out), exp_h, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np_(c_new), exp_c, atol=TOL, rtol=TOL)
    # The alternative reading (peek at the new cell state) gives a clearly different output.
    o_pre = conv_same(np.concatenate([np_(x), np_(h)], 1), np_(cell.conv.weight), np_(cell.conv.bias))[:, 6:]
    alt = np.tanh(exp_c) * sigmoid(o_pre + 2.0 * exp_c)
    assert np.abs(alt - np_(out)).max() > 1e-2


def test_layer_normalised_cell_state_is_carried():
    """With layer_norm the state's c_t is LN(c_t) (unit variance per sample here), and h_t = tanh(LN c_t) sigmoid(o)."""
    cell = randomise(build(kernel=1, layer_norm=True), 15)
    with torch.no_grad():
        for n in cell.norms:
            n.gamma.fill_(1.0)
            n.beta.zero_()
    rng = np.random.default_rng(16)
    x, c, h = rand(rng, 2, 3, 2, 2), 3 * rand(rng, 2, 2, 2, 2), rand(rng, 2, 2, 2, 2)
    out, (c_new, h_new) = cell(x, (c, h))
    norms = [(np.ones(2), np.zeros(2))] * 5
    exp_h, exp_c, c_raw = reference(cell, np_(x), np_(c), np_(h), norms=norms)
    np.testing.assert_allclose(np_(c_new), exp_c, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np_(out), exp_h, atol=TOL, rtol=TOL)
    assert torch.equal(h_new, out)
    cn = np_(c_new)
    np.testing.assert_allclose(cn.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(cn.var(axis=(1, 2, 3)), 1.0, rtol=1e-4)
    assert np.abs(c_raw - cn).max() > 1e-2  # the raw c_t is not what is carried


def test_peepholes_are_per_pixel():
    """Peephole weights have shape (C, H, W) and exist only with peepholes=True."""
    cell = build(out=2, hw=(3, 2), peepholes=True)
    for name in ("w_f", "w_i", "w_o"):
        assert getattr(cell, name).shape == (2, 3, 2)
    plain = build()
    assert not any(n.startswith("w_") for n, _ in plain.named_parameters())


def test_zero_state():
    """The state is (c, h), both zeros of batch 1 and the output depth."""
    cell = build(out=4, hw=(3, 2))
    c, h = cell.init_state(torch.zeros(1))
    assert c.shape == h.shape == (1, 4, 3, 2)
    assert not c.any() and not h.any()


def test_batch_one_state_broadcasts():
    """A batch-1 (c, h) with a batch-2 input equals the state expanded to batch 2."""
    cell = randomise(build(kernel=3, hw=(3, 3), peepholes=True, layer_norm=True), 17)
    x, c, h = rands(18, (2, 3, 3, 3), (1, 2, 3, 3), (1, 2, 3, 3))
    out_b, (c_b, _) = cell(x, (c, h))
    out_e, (c_e, _) = cell(x, (c.expand(2, 2, 3, 3).clone(), h.expand(2, 2, 3, 3).clone()))
    assert c_b.shape == (2, 2, 3, 3)
    assert torch.allclose(out_b, out_e, atol=1e-6)
    assert torch.allclose(c_b, c_e, atol=1e-6)
