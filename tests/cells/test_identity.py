"""Identity cell: out_t = x_t, no state, no parameters."""

import torch
from numpy_ref import build_cell

from convrnn.cells import IdentityConfig


def build(c=3):
    return build_cell(IdentityConfig(), c)


def test_output_is_input_and_state_untouched():
    """The output is x itself (values and shape), whatever the residual/feedback; the empty state stays empty."""
    cell = build()
    x = torch.randn(2, 3, 2, 2)
    out, state = cell(x, (), res=torch.randn(2, 3, 2, 2))
    assert torch.equal(out, x)
    assert state == ()


def test_no_state_no_parameters():
    """A purely feedforward layer: zero-state tuple is empty, nothing to train, depth preserved."""
    cell = build(4)
    assert cell.init_state(torch.zeros(1)) == ()
    assert cell.state_channels() == ()
    assert list(cell.parameters()) == []
    assert cell.out_channels == 4


def test_batch_follows_input():
    """With an empty state there is nothing to broadcast: a batch-2 input gives a batch-2 output."""
    cell = build()
    x = torch.randn(2, 3, 2, 2)
    out, _ = cell(x, cell.init_state(x))
    assert out.shape == (2, 3, 2, 2)
    assert torch.equal(out, x)
