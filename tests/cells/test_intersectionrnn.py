"""Convolutional IntersectionRNN: the state h goes through time, the output y through depth.

[g_h, h^, g_y, y^] = W * [x, h] + b;  a = sigmoid(g_h + fb);  b = sigmoid(g_y + fb)
h_t = a h + (1 - a) tanh(h^);  y_t = b x + (1 - b) relu(y^)
"""

import numpy as np
import pytest
import torch
from numpy_ref import TOL, cell_builder, conv_same, np_, randomise, rands, sigmoid

from convrnn.cells import CellContext, IntersectionRNNConfig
from convrnn.errors import SpecError

build = cell_builder(IntersectionRNNConfig, out=None)


@pytest.mark.parametrize(("kernel", "hw", "forget_bias"), [(1, (2, 2), 1.0), (3, (3, 3), 1.0), (2, (2, 3), -0.5)])
def test_step_matches_equations(kernel, hw, forget_bias):
    """Output y and new state h each match the equations (they are different tensors)."""
    cell = randomise(build(kernel=kernel, hw=hw, forget_bias=forget_bias), kernel)
    x, h = rands(40 + kernel, (2, 3, *hw), (2, 3, *hw))
    y, (h_new,) = cell(x, (h,))
    xn, hn = np_(x), np_(h)
    z = conv_same(np.concatenate([xn, hn], 1), np_(cell.conv.weight), np_(cell.conv.bias))
    gh, hh, gy, yy = (z[:, 3 * k : 3 * k + 3] for k in range(4))
    a, b = sigmoid(gh + forget_bias), sigmoid(gy + forget_bias)
    np.testing.assert_allclose(np_(h_new), a * hn + (1 - a) * np.tanh(hh), atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np_(y), b * xn + (1 - b) * np.maximum(yy, 0), atol=TOL, rtol=TOL)
    assert not torch.allclose(y, h_new)


def test_output_depth_must_equal_input_depth():
    """y mixes x in directly, so a different out_channels is a spec error naming the field."""
    with pytest.raises(SpecError, match=r"x\.out_channels"):
        IntersectionRNNConfig(out_channels=4).check_context(CellContext(in_channels=3, hw=(2, 2), res_channels=3), "x")
    ctx = CellContext(in_channels=3, hw=(2, 2), res_channels=3)
    IntersectionRNNConfig(out_channels=3).check_context(ctx, "x")
    IntersectionRNNConfig().check_context(ctx, "x")


def test_takes_no_feedback():
    with pytest.raises(SpecError, match="feedback"):
        IntersectionRNNConfig().check_context(CellContext(3, (2, 2), 3, fb_channels={"out": 2}), "x")


def test_batch_one_state_broadcasts():
    """A batch-1 state with a batch-2 input equals the state expanded to batch 2."""
    cell = randomise(build(kernel=3, hw=(3, 3)), 5)
    x, h = rands(6, (2, 3, 3, 3), (1, 3, 3, 3))
    y_b, (h_b,) = cell(x, (h,))
    y_e, (h_e,) = cell(x, (h.expand(2, 3, 3, 3).clone(),))
    assert h_b.shape == (2, 3, 3, 3)
    assert torch.allclose(y_b, y_e, atol=1e-6)
    assert torch.allclose(h_b, h_e, atol=1e-6)
