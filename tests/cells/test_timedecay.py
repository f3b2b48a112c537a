"""Time-decay memory: s_t = a * s_{t-1} + x_t with a used as is; s_{-1} = 0 (a None state)."""

import numpy as np
import torch
from numpy_ref import TOL, build_cell, rand, rands

from convrnn.cells import TimeDecayConfig


def build(decay=-0.3, trainable=True, c=2):
    return build_cell(TimeDecayConfig(decay=decay, trainable=trainable), c)


def test_first_step_is_the_input():
    """The zero state is None (it takes the input's shape); the first output is x_0 exactly."""
    cell = build()
    x = rand(np.random.default_rng(0), 2, 2, 2, 2)
    state = cell.init_state(x)
    assert state == (None,)
    out, (s,) = cell(x, state)
    assert torch.equal(out, x)
    assert torch.equal(s, x)


def test_update_hand_computed_with_negative_decay():
    """a = -0.3 is used as is (no sigmoid, no clamp): s_t = -0.3 s_{t-1} + x_t, over three steps."""
    rng = np.random.default_rng(1)
    cell = build(decay=-0.3)
    xs = [rand(rng, 2, 2, 2, 2) for _ in range(3)]
    a = float(np.float32(-0.3))
    s_np = np.zeros((2, 2, 2, 2))
    state = cell.init_state(xs[0])
    for x in xs:
        out, state = cell(x, state)
        s_prev, s_np = s_np, a * s_np + x.double().numpy()
        np.testing.assert_allclose(out.detach().double().numpy(), s_np, atol=TOL, rtol=TOL)
        assert torch.equal(state[0], out)
    # The check above can tell a from sigmoid(a): the two give clearly different last steps.
    squashed = 1 / (1 + np.exp(0.3)) * s_prev + xs[-1].double().numpy()
    assert np.abs(squashed - s_np).max() > 0.1


def test_decay_above_one_is_not_squashed():
    """A decay of 1.5 amplifies the previous state (a sigmoid or clamp would not allow it)."""
    cell = build(decay=1.5)
    x = torch.zeros(1, 2, 2, 2)
    prev = torch.full((1, 2, 2, 2), 2.0)
    out, _ = cell(x, (prev,))
    assert torch.allclose(out, torch.full((1, 2, 2, 2), 3.0))


def test_trainable_decay_is_a_parameter_with_gradient():
    """trainable=True: a is a Parameter, d(sum s_t)/da = sum s_{t-1}."""
    cell = build(decay=-0.3)
    assert [n for n, _ in cell.named_parameters()] == ["decay"]
    prev = torch.tensor([[1.0, 2.0, -0.5]])
    out, _ = cell(torch.ones(1, 3), (prev,))
    out.sum().backward()
    assert torch.allclose(cell.decay.grad, torch.tensor([2.5]))


def test_frozen_decay_is_a_buffer_not_a_parameter():
    """trainable=False: a is a buffer (saved in the state dict, never trained) and still applied."""
    cell = build(decay=0.25, trainable=False)
    assert list(cell.parameters()) == []
    assert "decay" in dict(cell.named_buffers())
    assert "decay" in cell.state_dict()
    assert not cell.decay.requires_grad
    out, _ = cell(torch.ones(1, 2, 2, 2), (torch.full((1, 2, 2, 2), 4.0),))
    assert torch.allclose(out, torch.full((1, 2, 2, 2), 2.0))


def test_works_on_readout_shaped_inputs():
    """The state takes the input's shape, so (B, C) readout vectors work too."""
    cell = build(decay=0.5)
    x0, x1 = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]])
    out0, st = cell(x0, cell.init_state(x0))
    out1, _ = cell(x1, st)
    assert torch.allclose(out1, torch.tensor([[1.0, -0.5]]))
    assert out0.shape == (1, 2)


def test_batch_one_state_broadcasts():
    """A batch-1 state with a batch-2 input equals the state expanded to batch 2."""
    cell = build(decay=-0.3)
    x, s1 = rands(2, (2, 2, 2, 2), (1, 2, 2, 2))
    out_b, _ = cell(x, (s1,))
    out_e, _ = cell(x, (s1.expand(2, 2, 2, 2).clone(),))
    assert out_b.shape == (2, 2, 2, 2)
    assert torch.allclose(out_b, out_e, atol=1e-7)
    assert not torch.allclose(out_b[0], out_b[1])


def test_frozen_value_is_read_once_and_again_when_written():
    """A frozen a = 0 passes x through under the fast schedule; the value is checked only when the
    buffer is replaced or written to (reading it waits for the device)."""
    cell = build(decay=0.0, trainable=False)
    x = rand(np.random.default_rng(5), 2, 2, 2, 2)
    cell.begin(True)
    assert cell.update((x,), (x * 3,))[0] is x
    checked = cell._checked
    cell.begin(True)
    assert cell._checked is checked  # unchanged: not read again
    with torch.no_grad():
        cell.decay.fill_(0.5)  # written in place (as load_state_dict does): read again
    cell.begin(True)
    s, _ = cell.update((x,), (x,))
    torch.testing.assert_close(s, 1.5 * x)
    cell.decay = torch.zeros(1)  # another tensor
    cell.begin(True)
    assert cell.update((x,), (x,))[0] is x
    cell.begin(False)  # the naive schedule computes a * s + x
    assert cell.update((x,), (x,))[0] is not x
