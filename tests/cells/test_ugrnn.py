"""Convolutional UGRNN: [g^, c^] = W * [x, h] + b;  g = sigmoid(g^ + forget_bias);  h_t = g h + (1-g) tanh(c^)."""

import numpy as np
import pytest
import torch
from numpy_ref import TOL, cell_builder, conv_same, np_, randomise, rands, sigmoid

from convrnn.cells import UGRNNConfig

build = cell_builder(UGRNNConfig)


def reference(cell, x, h, forget_bias):
    c = h.shape[1]
    z = conv_same(np.concatenate([x, h], 1), np_(cell.conv.weight), np_(cell.conv.bias))
    g = sigmoid(z[:, :c] + forget_bias)
    return g * h + (1 - g) * np.tanh(z[:, c:])


@pytest.mark.parametrize(("kernel", "hw", "forget_bias"), [(1, (2, 2), 1.0), (2, (3, 3), 1.0), (3, (3, 2), 0.3)])
def test_step_matches_equations(kernel, hw, forget_bias):
    """Random weights, non-zero state; the 2x2 kernel exercises TF's (0, 1) padding inside the cell."""
    cell = randomise(build(kernel=kernel, hw=hw, forget_bias=forget_bias), kernel)
    x, h = rands(30 + kernel, (2, 3, *hw), (2, 2, *hw))
    out, (h_new,) = cell(x, (h,))
    assert out.shape == (2, 2, *hw)
    np.testing.assert_allclose(np_(out), reference(cell, np_(x), np_(h), forget_bias), atol=TOL, rtol=TOL)
    assert torch.equal(h_new, out)


def test_forget_bias_shifts_the_update_gate():
    """Zero weights and bias: g = sigmoid(forget_bias), the candidate is tanh(0) = 0, so h_t = g h."""
    for fb in (1.0, 0.0):
        cell = build(forget_bias=fb)
        with torch.no_grad():
            cell.conv.weight.zero_()
            cell.conv.bias.zero_()
        h = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]], [[-1.0, 0.25], [2.0, -0.5]]]])
        out, _ = cell(torch.randn(1, 3, 2, 2), (h,))
        np.testing.assert_allclose(np_(out), sigmoid(fb) * np_(h), atol=TOL, rtol=TOL)


def test_batch_one_state_broadcasts():
    """A batch-1 state with a batch-2 input equals the state expanded to batch 2."""
    cell = randomise(build(kernel=3, hw=(3, 3)), 8)
    x, h = rands(9, (2, 3, 3, 3), (1, 2, 3, 3))
    out_b, _ = cell(x, (h,))
    out_e, _ = cell(x, (h.expand(2, 2, 3, 3).clone(),))
    assert out_b.shape == (2, 2, 3, 3)
    assert torch.allclose(out_b, out_e, atol=1e-6)
