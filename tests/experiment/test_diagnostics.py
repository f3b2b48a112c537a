"""convrnn.experiment.diagnostics on a tiny GRU model (32 px, width 1/8, 7 steps)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import convrnn
from convrnn.experiment.diagnostics import diagnose, gate_stats, parameter_groups

T = 7  # the readout first sees the stimulus at step 5
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "imnetds"]


def tiny(cell: str = "gru") -> convrnn.ConvRNN:
    torch.manual_seed(0)
    return convrnn.create_model(f"{cell}_shallow", num_classes=10, image_size=32, width=0.125, times=T)


def batch(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)


def test_shapes_and_fast_schedule_restored():
    model = tiny()
    model.set_grad_checkpointing(True, segment_steps=3)
    x, y = batch()
    d = diagnose(model, x, y, times=T)
    assert model.fast and model.segment_steps == 3  # the naive schedule was only borrowed
    assert d.layers == LAYERS and d.times == T
    assert set(d.param_grad_norm) == set(LAYERS)
    for name in LAYERS:
        assert len(d.output_grad_norm[name]) == T
        assert len(d.activations[name]) == T
    assert set(d.gates) == {"conv3", "conv4", "conv5"}  # the GRU layers; the others have no readable cell
    for gates in d.gates.values():
        assert set(gates) == {"reset", "update", "candidate"}
        assert all(len(v) == T for v in gates.values())  # one record per step
    assert d.first_stimulus_step == {"conv1": 0, "conv2": 1, "conv3": 2, "conv4": 3, "conv5": 4, "imnetds": 5}
    for name, first in d.first_stimulus_step.items():  # the same output for every image until the stimulus arrives
        acts = d.activations[name]
        assert all(a.batch_std <= 1e-5 * a.abs_mean for a in acts[:first]), name
        assert acts[first].batch_std > 1e-2 * acts[first].abs_mean, name
    assert all(math.isfinite(v) for v in d.param_grad_norm.values())
    assert d.to_dict()["gates"]["conv3"]["update"][0]["mean"] == d.gates["conv3"]["update"][0].mean


def test_output_gradients_equal_the_hand_computed_ones_and_vanish_out_of_reach():
    """Loss on the last step: d loss / d logits[T-1] = (softmax - onehot) / B; the readout (memory a = 0)
    passes nothing between steps, so its earlier outputs get exactly 0. Layer L at distance k from the
    readout reaches the loss only up to step T-1-k: later outputs get exactly zero, that one does not."""
    model = tiny()
    x, y = batch()
    d = diagnose(model, x, y, times=T)
    with torch.no_grad():
        logits = model(x, times=T).logits[-1]
    expected = ((F.softmax(logits, -1) - F.one_hot(y, 10)) / len(y)).norm().item()
    assert d.output_grad_norm["imnetds"][T - 1] == pytest.approx(expected, rel=1e-4)
    assert d.output_grad_norm["imnetds"][: T - 1] == [0.0] * (T - 1)
    for k, name in enumerate(reversed(LAYERS[:-1]), start=1):  # conv5 is 1 step from the readout, ...
        g = d.output_grad_norm[name]
        assert g[T - 1 - k] > 0, name
        assert g[T - k :] == [0.0] * k, name


def test_parameter_gradients_are_those_of_the_trainers_loss():
    """The per-layer norms make up the total norm of the gradient of the fast schedule's last-step loss."""
    model = tiny()
    x, y = batch()
    d = diagnose(model, x, y, times=T)
    total = math.sqrt(sum(v * v for v in d.param_grad_norm.values()))
    kept = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    F.cross_entropy(model(x, times=T).logits[-1], y).backward()
    ref = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None)).item()
    assert total == pytest.approx(ref, rel=1e-4)
    for n, p in model.named_parameters():  # diagnose leaves this batch's gradients in .grad
        torch.testing.assert_close(kept[n], p.grad, rtol=1e-4, atol=1e-7)
    groups = parameter_groups(model)
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    assert d.param_grad_norms.keys() == {n for n, _ in model.named_parameters()}


def test_gate_readout_follows_the_cell_equations():
    """GRU gate convolutions zeroed: r = sigmoid(b_r + forget_bias), u = sigmoid(b_u), c = tanh(b_c)."""
    model = tiny()
    cell = model.layers["conv4"].cell
    c = cell.out_channels
    with torch.no_grad():
        cell.gates.weight.zero_()
        cell.gates.bias[:c] = 0.5  # reset
        cell.gates.bias[c:] = -2.0  # update
        cell.candidates.weight.zero_()
        cell.candidates.bias.fill_(3.5)
    x, y = batch()
    d = diagnose(model, x, y, times=T)
    g = d.gates["conv4"]
    for t in range(T):
        assert g["reset"][t].mean == pytest.approx(torch.sigmoid(torch.tensor(1.5)).item(), abs=1e-6)
        assert g["update"][t].mean == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item(), abs=1e-6)
        assert g["update"][t].saturated == 0.0
        assert g["candidate"][t].mean == pytest.approx(math.tanh(3.5), abs=1e-6)
        assert g["candidate"][t].high == 1.0 and g["candidate"][t].low == 0.0  # tanh(3.5) > 0.9


@pytest.mark.parametrize("cell", ["ugrnn", "lstm", "intersectionrnn"])
def test_other_readable_cells(cell):
    model = tiny(cell)
    x, y = batch()
    d = diagnose(model, x, y, times=T)
    assert set(d.gates) == {"conv3", "conv4", "conv5"}
    assert all(len(v) == T for gates in d.gates.values() for v in gates.values())
    if cell == "lstm":  # conv4 has peepholes: only the candidate is readable there
        assert set(d.gates["conv4"]) == {"candidate"}
        assert set(d.gates["conv3"]) == {"candidate", "input", "forget", "output"}


def test_gate_stats():
    s = gate_stats(torch.tensor([0.01, 0.5, 0.97, 0.99]))
    assert (s.low, s.high, s.saturated) == (0.25, 0.5, 0.75)
    t = gate_stats(torch.tensor([-0.95, 0.0, 0.5, 0.92]), kind="tanh")
    assert (t.low, t.high) == (0.25, 0.25)
    assert t.mean == pytest.approx(0.1175)
    with pytest.raises(ValueError, match="kind"):
        gate_stats(torch.zeros(2), kind="relu")
