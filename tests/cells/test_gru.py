"""Convolutional GRU: one step against the docstring equations, computed in numpy.

[r^, u^] = W_g * [x, h] + b_g;  r = sigmoid(r^ + forget_bias);  u = sigmoid(u^)
c = tanh(W_c * [x, r . h] + b_c);  h_t = u . h + (1 - u) . c
"""

import numpy as np
import pytest
import torch
from numpy_ref import TOL, cell_builder, conv_same, layer_norm, norm_params, np_, randomise, rands, sigmoid

import convrnn
from convrnn.cells import GRUConfig

build = cell_builder(GRUConfig)


def reference(cell, x, h, forget_bias, norms=None):
    """The docstring equations; ``norms`` = [(gamma, beta)] * 3 for r^, u^ and the candidate."""
    c = h.shape[1]
    z = conv_same(np.concatenate([x, h], 1), np_(cell.gates.weight), np_(cell.gates.bias))
    r_pre, u_pre = z[:, :c], z[:, c:]
    if norms:
        r_pre, u_pre = layer_norm(r_pre, *norms[0]), layer_norm(u_pre, *norms[1])
    r, u = sigmoid(r_pre + forget_bias), sigmoid(u_pre)
    c_pre = conv_same(np.concatenate([x, r * h], 1), np_(cell.candidates.weight), np_(cell.candidates.bias))
    if norms:
        c_pre = layer_norm(c_pre, *norms[2])
    return u * h + (1 - u) * np.tanh(c_pre)


@pytest.mark.parametrize(("kernel", "hw"), [(1, (2, 2)), (3, (3, 3)), (2, (3, 3))])
def test_step_matches_equations(kernel, hw):
    """Input depth 3, state depth 2, random weights and a non-zero previous state."""
    cell = randomise(build(kernel=kernel, hw=hw), kernel)
    x, h = rands(20 + kernel, (2, 3, *hw), (2, 2, *hw))
    out, (h_new,) = cell(x, (h,))
    assert out.shape == (2, 2, *hw)
    np.testing.assert_allclose(np_(out), reference(cell, np_(x), np_(h), 1.0), atol=TOL, rtol=TOL)
    assert torch.equal(h_new, out)


def test_step_with_layer_norm_matches_equations():
    """layer_norm normalises r^, u^ (before forget_bias is added) and the candidate pre-activation."""
    cell = randomise(build(layer_norm=True), 4)
    x, h = rands(5, (2, 3, 2, 2), (2, 2, 2, 2))
    out, _ = cell(x, (h,))
    norms = [norm_params(n) for n in cell.norms]
    np.testing.assert_allclose(np_(out), reference(cell, np_(x), np_(h), 1.0, norms), atol=TOL, rtol=TOL)


def test_gate_bias_starts_at_one_candidate_bias_at_zero():
    """The reference initialises the gate bias to 1 (on top of forget_bias); the candidate bias to 0."""
    cell = build()
    assert torch.equal(cell.gates.bias.detach(), torch.ones(4))
    assert torch.equal(cell.candidates.bias.detach(), torch.zeros(2))


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, -2.0])
def test_forget_bias_enters_the_reset_gate_only(forget_bias):
    """All gate weights and biases zero: r = sigmoid(forget_bias), u = sigmoid(0) = 1/2.

    The candidate reads only r . h (x-weights zero, W_c = 0.8 I on the state), so
    h_t = h/2 + tanh(0.8 sigmoid(forget_bias) h)/2, which tells the forget bias apart from
    none at all and from one added to u.
    """
    cell = build(forget_bias=forget_bias)
    with torch.no_grad():
        cell.gates.weight.zero_()
        cell.gates.bias.zero_()
        cell.candidates.weight.zero_()
        cell.candidates.weight[:, 3:, 0, 0] = 0.8 * torch.eye(2)
        cell.candidates.bias.zero_()
    h = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]], [[-1.0, 0.25], [2.0, -0.5]]]])
    x = torch.randn(1, 3, 2, 2)
    out, _ = cell(x, (h,))
    hn = np_(h)
    r = sigmoid(forget_bias)
    expected = 0.5 * hn + 0.5 * np.tanh(0.8 * r * hn)
    np.testing.assert_allclose(np_(out), expected, atol=TOL, rtol=TOL)
    without = 0.5 * hn + 0.5 * np.tanh(0.8 * 0.5 * hn)
    if forget_bias != 0.0:
        assert np.abs(expected - without).max() > 1e-2


def test_state_depth_and_zero_state():
    """State is one tensor of the output depth; the zero state has batch 1."""
    cell = build(out=4)
    assert cell.out_channels == 4
    (s,) = cell.init_state(torch.zeros(1))
    assert s.shape == (1, 4, 2, 2)
    assert not s.any()


def test_batch_one_state_broadcasts():
    """A batch-1 state with a batch-2 input equals the state expanded to batch 2."""
    cell = randomise(build(kernel=3, hw=(3, 3)), 6)
    x, h = rands(7, (2, 3, 3, 3), (1, 2, 3, 3))
    out_b, (s_b,) = cell(x, (h,))
    out_e, _ = cell(x, (h.expand(2, 2, 3, 3).clone(),))
    assert s_b.shape == (2, 2, 3, 3)
    assert torch.allclose(out_b, out_e, atol=1e-6)
    assert not torch.allclose(out_b[0], out_b[1])


def test_layer_norm_gradients_stay_finite_before_the_stimulus():
    """Until the stimulus reaches a layer, x and h are zero and every pre-activation is its bias. With equal
    biases (gates all 1, candidates all 0) each LayerNorm saw a constant input and, with TF's eps of 1e-12,
    scaled gradients by 1e6 per step: gru_shallow with layer_norm had an infinite gradient norm at the first
    training step. The biases now start spread (around 1 and 0), keeping every LayerNorm's gradient bounded."""
    torch.manual_seed(0)
    cell = build(out=4, kernel=3, hw=(3, 3), layer_norm=True)
    out, _ = cell(torch.zeros(1, 3, 3, 3), (torch.zeros(1, 4, 3, 3),))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for name, p in cell.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() < 1e4, name
    assert cell.gates.bias.mean().item() == pytest.approx(1.0, abs=0.02)
    assert 0 < cell.gates.bias.std().item() < 0.05 and 0 < cell.candidates.bias.std().item() < 0.05

    spec = convrnn.model_spec("gru_shallow", num_classes=10, image_size=32, width=0.125, times=7)
    for layer in spec.layers[2:5]:
        layer.cell.layer_norm = True
    model = convrnn.create_model(spec.validate())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(model(images, times=7).logits[-1], torch.tensor([1, 2])).backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    assert torch.isfinite(norm) and norm < 1e3
