"""SimpleRNN cell: h_t = act(LN(W_i * x_t + b_i + W_s * h_{t-1} + b_s)), checked in numpy."""

import numpy as np
import pytest
import torch
from numpy_ref import TOL, cell_builder, conv_same, elu, layer_norm, norm_params, np_, randomise, rands

from convrnn.cells import SimpleRNNConfig

build = cell_builder(SimpleRNNConfig)


@pytest.mark.parametrize(("kernel", "hw"), [(1, (2, 2)), (3, (3, 3)), (2, (3, 2))])
def test_step_with_layer_norm_matches_equations(kernel, hw):
    """Default config (LN on, ELU), input depth 2 -> output depth 3, non-zero previous state."""
    cell = randomise(build(2, 3, kernel, hw), kernel)
    x, h = rands(10 + kernel, (2, 2, *hw), (2, 3, *hw))
    out, (h_new,) = cell(x, (h,))
    z = conv_same(np_(x), np_(cell.i.weight), np_(cell.i.bias)) + conv_same(
        np_(h), np_(cell.s.weight), np_(cell.s.bias)
    )
    expected = elu(layer_norm(z, *norm_params(cell.norm)))
    assert out.shape == (2, 3, *hw)
    np.testing.assert_allclose(np_(out), expected, atol=TOL, rtol=TOL)
    assert torch.equal(h_new, out)


def test_step_without_layer_norm_other_activation():
    """layer_norm=False drops the norm (no parameters for it); the activation is the configured one."""
    cell = build(3, 2, 1, (2, 2), layer_norm=False, activation="tanh")
    assert cell.norm is None
    assert not any("norm" in n for n, _ in cell.named_parameters())
    randomise(cell, 3)
    x, h = rands(4, (1, 3, 2, 2), (1, 2, 2, 2))
    out, _ = cell(x, (h,))
    wi, ws = np_(cell.i.weight)[:, :, 0, 0], np_(cell.s.weight)[:, :, 0, 0]
    z = (
        np.einsum("oc,bchw->bohw", wi, np_(x))
        + np.einsum("oc,bchw->bohw", ws, np_(h))
        + (np_(cell.i.bias) + np_(cell.s.bias))[None, :, None, None]
    )
    np.testing.assert_allclose(np_(out), np.tanh(z), atol=TOL, rtol=TOL)


def test_layer_norm_is_per_sample():
    """Scaling one sample's input leaves the other sample's output unchanged (no batch statistics)."""
    cell = randomise(build(2, 3, 1, (2, 2)), 5)
    x, h = rands(6, (2, 2, 2, 2), (2, 3, 2, 2))
    x2 = x.clone()
    x2[1] = 50 * x2[1] - 4
    out1, _ = cell(x, (h,))
    out2, _ = cell(x2, (h,))
    assert torch.allclose(out1[0], out2[0], atol=1e-6)
    assert not torch.allclose(out1[1], out2[1], atol=1e-3)


def test_state_and_check():
    """Zero state is one (1, C_out, H, W) tensor; check() rejects bad kernels and activations."""
    cell = build(2, 3, 3, (3, 3))
    (s,) = cell.init_state(torch.zeros(1))
    assert s.shape == (1, 3, 3, 3)
    assert not s.any()
    with pytest.raises(ValueError, match="kernel"):
        SimpleRNNConfig(kernel=0).check("x")
    with pytest.raises(ValueError):
        SimpleRNNConfig(activation="swish").check("x")


def test_batch_one_state_broadcasts():
    """A batch-1 state with a batch-2 input equals the state expanded to batch 2."""
    cell = randomise(build(2, 3, 3, (3, 3)), 7)
    x, h = rands(8, (2, 2, 3, 3), (1, 3, 3, 3))
    out_b, (s_b,) = cell(x, (h,))
    out_e, _ = cell(x, (h.expand(2, 3, 3, 3).clone(),))
    assert out_b.shape == (2, 3, 3, 3)
    assert s_b.shape == (2, 3, 3, 3)
    assert torch.allclose(out_b, out_e, atol=1e-6)
