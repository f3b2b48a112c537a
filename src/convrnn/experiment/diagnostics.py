"""Training diagnostics for ConvRNNs: where gradients go, what the activity and the gates do, per layer and step.

Everything comes from one forward and backward pass of a model on one batch (:func:`diagnose`):

- the loss and, per layer, the norm of the gradient of its parameters (and of each parameter);
- per layer and step, the norm of the gradient of the loss with respect to that layer's output at that
  step: how much of the training signal reaches each stage of the unroll;
- per layer and step, statistics of the layer's output (mean, s.d., mean absolute value, largest
  absolute value, and the s.d. across the images of the batch: the image-dependent part);
- per gated layer and step, statistics of each gate (mean, fraction saturated) where the cell is one
  whose gates can be read from its convolutions (:data:`GATE_READERS`: GRU, UGRNN, IntersectionRNN, LSTM).

The gates are read through forward hooks on the cells' convolutions, so no cell changes its interface.
The unroll runs the naive schedule (every layer, every sample, every step; the fast schedule gives the
same numbers) so that every recorded output is the very tensor the later steps read, and without
checkpointing in segments (whose reentrant checkpoints do not serve ``torch.autograd.grad``).

Used for the GRU/UGRNN investigation of the cell comparison (``convrnn.experiment.cells``): see
``docs/results.md``.

A sigmoid gate counts as saturated where it is below ``SATURATION`` or above ``1 - SATURATION`` (its
derivative is then below 19% of its largest value); a tanh candidate where ``|tanh| > 1 - 2 SATURATION``
(the same pre-activations, scaled by 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from convrnn.cells.gru import GRUCell
from convrnn.cells.intersectionrnn import IntersectionRNNCell
from convrnn.cells.lstm import LSTMCell
from convrnn.cells.ugrnn import UGRNNCell
from convrnn.model import ConvRNN

__all__ = [
    "GATE_READERS",
    "SATURATION",
    "Diagnostics",
    "GateStats",
    "TensorStats",
    "diagnose",
    "gate_stats",
    "parameter_groups",
    "tensor_stats",
]

SATURATION = 0.05  # a sigmoid gate below this or above 1 - this counts as saturated


@dataclass
class TensorStats:
    """Summary of one tensor (all samples, channels and positions together).

    ``batch_std``: the s.d. across the samples of the batch, averaged over channels and positions: the
    part of the activity that depends on the image (0 where every image gives the same output, e.g.
    before the stimulus arrives).
    """

    mean: float
    std: float
    abs_mean: float
    abs_max: float
    batch_std: float


@dataclass
class GateStats:
    """Summary of one gate (a sigmoid in [0, 1]) or candidate (a tanh in [-1, 1]) at one step.

    ``saturated``: the fraction of elements where the nonlinearity is saturated (see the module
    docstring); ``low``/``high``: the fractions saturated at the bottom and at the top.
    """

    mean: float
    std: float
    saturated: float
    low: float
    high: float


@dataclass
class Diagnostics:
    """What :func:`diagnose` measures on one batch.

    ``output_grad_norm[layer][t]``: the L2 norm of d loss / d (output of ``layer`` at step ``t``), over
    the whole batch (the loss is a batch mean). ``activations[layer][t]``: statistics of that output.
    ``gates[layer][gate][t]``: statistics of a gate at step ``t`` (only layers with a readable cell).
    ``param_grad_norm[layer]``: the L2 norm of the gradient of all of a layer's parameters;
    ``param_grad_norms[name]``: the same per parameter (``model.named_parameters()`` names).
    """

    loss: float
    times: int
    layers: list[str]
    first_stimulus_step: dict[str, int]
    param_grad_norm: dict[str, float]
    param_grad_norms: dict[str, float]
    output_grad_norm: dict[str, list[float]]
    activations: dict[str, list[TensorStats]]
    gates: dict[str, dict[str, list[GateStats]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts (for JSON)."""
        return asdict(self)


def tensor_stats(t: Tensor) -> TensorStats:
    """Mean, s.d., mean absolute value, largest absolute value and between-sample s.d. of a (B, ...) tensor."""
    t = t.detach().float()
    a = t.abs()
    return TensorStats(
        mean=t.mean().item(),
        std=t.std(unbiased=False).item(),
        abs_mean=a.mean().item(),
        abs_max=a.max().item(),
        batch_std=t.std(dim=0, unbiased=False).mean().item(),
    )


def gate_stats(g: Tensor, kind: str = "sigmoid", threshold: float = SATURATION) -> GateStats:
    """Statistics of a gate (``kind="sigmoid"``, values in [0, 1]) or a candidate (``"tanh"``, [-1, 1])."""
    g = g.detach().float()
    if kind == "tanh":
        g = (g + 1) / 2  # the same saturation test on the same pre-activations scaled by 2
    elif kind != "sigmoid":
        raise ValueError(f"kind: 'sigmoid' or 'tanh', got {kind!r}")
    low = (g < threshold).float().mean().item()
    high = (g > 1 - threshold).float().mean().item()
    m = g.mean().item()
    s = g.std(unbiased=False).item()
    if kind == "tanh":
        m, s = 2 * m - 1, 2 * s
    return GateStats(mean=m, std=s, saturated=low + high, low=low, high=high)


def parameter_groups(model: ConvRNN) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parameters by layer (``model.layers`` names), plus ``decoder`` if it has any."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        key = parts[1] if parts[0] == "layers" else parts[0]
        groups.setdefault(key, []).append((name, p))
    return groups


# ----------------------------------------------------------------------------------------------------------------
# Gates, read from the cells' convolutions

# A reader maps a cell to [(conv module, fn(conv output) -> {gate name: (values, kind)})]. Each conv runs once
# per step of the naive schedule, so the k-th call is step k.
GateFn = Callable[[Tensor], dict[str, tuple[Tensor, str]]]


def _norm(cell: nn.Module, i: int, t: Tensor) -> Tensor:
    return cell.norms[i](t) if getattr(cell, "norms", None) is not None else t


def _gru(cell: GRUCell) -> list[tuple[nn.Module, GateFn]]:
    def gates(z: Tensor) -> dict[str, tuple[Tensor, str]]:
        r, u = z.chunk(2, dim=1)
        r, u = _norm(cell, 0, r), _norm(cell, 1, u)
        return {"reset": (torch.sigmoid(r + cell.forget_bias), "sigmoid"), "update": (torch.sigmoid(u), "sigmoid")}

    def candidate(z: Tensor) -> dict[str, tuple[Tensor, str]]:
        return {"candidate": (torch.tanh(_norm(cell, 2, z)), "tanh")}

    return [(cell.gates, gates), (cell.candidates, candidate)]


def _ugrnn(cell: UGRNNCell) -> list[tuple[nn.Module, GateFn]]:
    def fn(z: Tensor) -> dict[str, tuple[Tensor, str]]:
        g, c = z.chunk(2, dim=1)
        g, c = _norm(cell, 0, g), _norm(cell, 1, c)  # (a UGRNN with LayerNorm norms g^ and c^, as the GRU)
        return {"update": (torch.sigmoid(g + cell.forget_bias), "sigmoid"), "candidate": (torch.tanh(c), "tanh")}

    return [(cell.conv, fn)]


def _intersection(cell: IntersectionRNNCell) -> list[tuple[nn.Module, GateFn]]:
    def fn(z: Tensor) -> dict[str, tuple[Tensor, str]]:
        gh, hh, gy, _ = z.chunk(4, dim=1)
        fb = cell.forget_bias
        return {
            "state_gate": (torch.sigmoid(gh + fb), "sigmoid"),
            "candidate": (torch.tanh(hh), "tanh"),
            "output_gate": (torch.sigmoid(gy + fb), "sigmoid"),
        }

    return [(cell.conv, fn)]


def _lstm(cell: LSTMCell) -> list[tuple[nn.Module, GateFn]]:
    # The peephole terms read the cell state, which a conv hook does not see: with peepholes only the
    # candidate (j) is reported.
    def fn(z: Tensor) -> dict[str, tuple[Tensor, str]]:
        i, j, f, o = (_norm(cell, k, g) for k, g in enumerate(z.chunk(4, dim=1)))
        out = {"candidate": (torch.tanh(j), "tanh")}
        if not cell.peepholes:
            out["input"] = (torch.sigmoid(i), "sigmoid")
            out["forget"] = (torch.sigmoid(f + cell.forget_bias), "sigmoid")
            out["output"] = (torch.sigmoid(o), "sigmoid")
        return out

    return [(cell.conv, fn)]


GATE_READERS: dict[type, Callable[[Any], list[tuple[nn.Module, GateFn]]]] = {
    GRUCell: _gru,
    UGRNNCell: _ugrnn,
    IntersectionRNNCell: _intersection,
    LSTMCell: _lstm,
}


@contextmanager
def _gate_hooks(model: ConvRNN, layers: Sequence[str]) -> Iterator[dict[str, dict[str, list[GateStats]]]]:
    """Record gate statistics of every readable cell in ``layers`` for as long as the context lasts."""
    found: dict[str, dict[str, list[GateStats]]] = {}
    handles = []

    def hook_for(layer: str, fn: GateFn) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            with torch.no_grad():
                for gate, (values, kind) in fn(output).items():
                    found[layer].setdefault(gate, []).append(gate_stats(values, kind))

        return hook

    try:
        for name in layers:
            cell = model.layers[name].cell
            reader = GATE_READERS.get(type(cell))
            if reader is None:
                continue
            found[name] = {}
            for module, fn in reader(cell):
                handles.append(module.register_forward_hook(hook_for(name, fn)))
        yield found
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _naive(model: ConvRNN) -> Iterator[None]:
    """The naive schedule, no segment checkpointing, for as long as the context lasts."""
    fast, segments = model.fast, model.segment_steps
    model.fast, model.segment_steps = False, 0
    try:
        yield
    finally:
        model.fast, model.segment_steps = fast, segments


# ----------------------------------------------------------------------------------------------------------------
# The measurement


def diagnose(
    model: ConvRNN,
    x: Tensor,
    y: Tensor,
    times: int | None = None,
    loss: str = "last",
    layers: Sequence[str] | None = None,
    gates: bool = True,
) -> Diagnostics:
    """Measure gradients, activity and gates of ``model`` on the batch ``(x, y)`` over ``times`` steps.

    Args:
        model: the model; its parameters' ``.grad`` are left as this batch's gradients (earlier ones
            are cleared first), so an optimizer step may follow.
        x: images (B, C, H, W), already normalised (or a video, as ``model`` takes it).
        y: labels (B,).
        times: steps to unroll (default: the spec's).
        loss: as the trainer's ``loss``: ``last`` (cross-entropy on the last step), ``avg`` or ``all``.
        layers: the layers to report per step (default: all of them).
        gates: also read the gates of the cells that :data:`GATE_READERS` knows.
    """
    from convrnn.train.trainer import readout_loss

    readout = model.spec.readout.layer
    layers = list(layers) if layers is not None else list(model.layers)
    times = times or model.spec.times
    record = list(dict.fromkeys([*layers, readout]))
    for p in model.parameters():
        p.grad = None
    with _naive(model), _gate_hooks(model, layers if gates else []) as gate_found:
        feats = model.features(x, areas=record, times=times)
    logits = torch.stack([feats[readout][t] for t in range(times)])
    value = readout_loss(model, logits, y, loss)
    outs = [feats[name][t] for name in layers for t in range(times)]
    grads = torch.autograd.grad(value, outs, retain_graph=True, allow_unused=True)
    output_grad_norm: dict[str, list[float]] = {name: [] for name in layers}
    for (name, _t), g in zip([(n, t) for n in layers for t in range(times)], grads, strict=True):
        output_grad_norm[name].append(0.0 if g is None else g.detach().float().norm().item())
    value.backward()

    param_grad_norm: dict[str, float] = {}
    param_grad_norms: dict[str, float] = {}
    for group, params in parameter_groups(model).items():
        total = 0.0
        for name, p in params:
            n = 0.0 if p.grad is None else p.grad.detach().float().norm().item()
            param_grad_norms[name] = n
            total += n * n
        param_grad_norm[group] = math.sqrt(total)

    first = model.first_stimulus_steps()
    return Diagnostics(
        loss=value.item(),
        times=times,
        layers=layers,
        first_stimulus_step={k: int(v) if math.isfinite(v) else -1 for k, v in first.items()},
        param_grad_norm=param_grad_norm,
        param_grad_norms=param_grad_norms,
        output_grad_norm=output_grad_norm,
        activations={name: [tensor_stats(feats[name][t]) for t in range(times)] for name in layers},
        gates={name: g for name, g in gate_found.items()},
    )
