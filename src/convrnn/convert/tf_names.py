"""Map the reference's TensorFlow variables onto a convrnn model's parameters.

The reference names variables ``tnn_model/<layer>/...``:

- ``pre_<n>/weights_basenet`` (+ ``weights_<i>`` for extra harbor inputs), ``pre_<n>/bias``,
  ``pre_<n>/weights`` (readout conv/FC), ``post_<n>/weights|bias``, ``post_<n>/residual_add_weights``;
- ``memory_decay`` (the time-decay memory, trainable or not);
- ``<Cell>/...`` for the cells, e.g. ``ConvLSTMCell/weights``, ``ConvGRUCell/gates/weights``,
  ``ReciprocalGateCell/cell/tau/depthwise_weights`` (median cell) or
  ``ReciprocalGateCell/cell/tau/weights`` (shallow cell).

- ``normalize/softmax_beta`` and ``decoder_threshold``: the temporal decoders' scalars
  (``tmaxconf``/``dthresh`` models). A trainable one (``tmaxconf``'s temperature) is a parameter and
  goes into the state dict; a frozen one (``dthresh``'s temperature and threshold, ``tmaxconf``'s
  threshold) is not state, so :func:`tf_to_state_dict` sets the checkpoint's value on the model's
  decoder and in its spec (``spec.readout.beta`` / ``.threshold``), which the converter saves with the
  weights: a checkpoint is the truth about its model, whatever the zoo's defaults (1.0, 0.9) say.

Layouts change on the way: conv kernels HWIO -> OIHW, depthwise kernels [kh, kw, in, 1] ->
[in, 1, kh, kw], FC [in, out] -> [out, in], LSTM peepholes [H, W, C] -> [C, H, W]. Every variable must
land somewhere (optimizer slots such as ``*/Momentum`` are ignored) and every parameter and buffer of
the model must be filled; anything left over on either side raises an error listing the names.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from convrnn.cells import (
    GRUCell,
    IntersectionRNNCell,
    LSTMCell,
    RGCCell,
    SimpleRNNCell,
    TimeDecayCell,
    UGRNNCell,
)
from convrnn.graph import ConvOp, LinearOp, ResidualOp
from convrnn.model import ConvRNN
from convrnn.ops import SameConv2d, SeparableConv2d

PREFIX = "tnn_model"
IGNORED = re.compile(r"(/Momentum|/Adam(_1)?|/ExponentialMovingAverage)$|^global_step$")


class NameMapError(KeyError):
    """TF variables and model parameters do not pair up one-to-one."""

    def __str__(self) -> str:
        return str(self.args[0])


def _hwio(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (3, 2, 0, 1))))


def _depthwise(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (2, 3, 0, 1))))


class _Pool:
    """The TF variables not yet used."""

    def __init__(self, tf: Mapping[str, np.ndarray]) -> None:
        self.left = {k: np.asarray(v) for k, v in tf.items() if not IGNORED.search(k)}

    def has(self, name: str) -> bool:
        return name in self.left

    def take(self, name: str) -> np.ndarray:
        if name not in self.left:
            raise NameMapError(f"TF variable {name!r} not found in the checkpoint")
        return self.left.pop(name)

    def scoped(self, prefix: str) -> list[str]:
        return sorted(k for k in self.left if k.startswith(prefix))


def _conv(pool: _Pool, mod: nn.Module, scope: str, out: dict[str, Tensor], key: str) -> None:
    """Fill a cell conv from ``scope/weights`` or ``scope_weights`` (or a separable scope)."""
    if isinstance(mod, SeparableConv2d):
        if mod.depthwise0 is not None:
            out[f"{key}.depthwise0.weight"] = _depthwise(pool.take(f"{scope}/depthwise_weights_0"))
        out[f"{key}.depthwise.weight"] = _depthwise(pool.take(f"{scope}/depthwise_weights"))
        out[f"{key}.pointwise.weight"] = _hwio(pool.take(f"{scope}/pointwise_weights"))
        if mod.bias is not None:
            out[f"{key}.bias"] = torch.from_numpy(pool.take(f"{scope}/bias"))
        return
    assert isinstance(mod, SameConv2d)
    sep = "_" if pool.has(f"{scope}_weights") else "/"  # the median cell's flat names, else scoped
    out[f"{key}.weight"] = _hwio(pool.take(f"{scope}{sep}weights"))
    if mod.bias is not None:
        out[f"{key}.bias"] = torch.from_numpy(pool.take(f"{scope}{sep}bias"))


# Our RGC submodule -> the reference's scope for it, first match wins (shallow cells.py names, then
# the median cell's).
_RGC_SCOPES: dict[str, tuple[str, ...]] = {
    "cell_in": ("cell/input_to_cell",),
    "cell_res": ("cell/res_to_cell", "cell/residual_to_cell"),
    "cell_tau": ("cell/tau", "cell/cell_to_cell"),
    "cell_gate": ("cell/gate", "cell/out_to_cell"),
    "cell_in_tau": ("cell/input_to_cell_tau",),
    "cell_res_tau": ("cell/residual_to_cell_tau",),
    "cell_in_gate": ("cell/input_to_cell_gate",),
    "cell_res_gate": ("cell/residual_to_cell_gate",),
    "out_in": ("out/input_to_out",),
    "out_tau": ("out/tau", "out/out_to_out"),
    "out_gate": ("out/gate", "out/cell_to_out"),
    "cell_to_out": ("out/gate", "out/cell_to_out"),
    "out_in_tau": ("out/input_to_out_tau",),
    "out_res_tau": ("out/residual_to_out_tau",),
    "out_in_gate": ("out/input_to_out_gate",),
    "out_res_gate": ("out/residual_to_out_gate",),
    "feedback.input": ("input/feedback", "input/feedback_to_input"),
    "feedback.cell": ("cell/feedback", "cell/feedback_to_cell"),
    "feedback.out": ("out/feedback", "out/feedback_to_out"),
}


def _scope_present(pool: _Pool, scope: str) -> bool:
    return any(pool.has(f"{scope}{s}") for s in ("/weights", "_weights", "/depthwise_weights"))


def _rgc(pool: _Pool, cell: RGCCell, base: str, key: str, out: dict[str, Tensor]) -> None:
    root = f"{base}/ReciprocalGateCell"
    for name, scopes in _RGC_SCOPES.items():
        mod = cell.get_submodule(name) if _has_submodule(cell, name) else None
        if mod is None:
            continue
        scope = next((f"{root}/{s}" for s in scopes if _scope_present(pool, f"{root}/{s}")), None)
        if scope is None:
            raise NameMapError(f"{key}.{name}: none of {[f'{root}/{s}' for s in scopes]} in the checkpoint")
        _conv(pool, mod, scope, out, f"{key}.{name}")
    if cell.out_res is not None and cell.out_res.proj is not None:
        name = next(
            (
                f"{root}/out/{s}"
                for s in ("residual_add_weights", "res_add/residual_add_weights")
                if pool.has(f"{root}/out/{s}")
            ),
            f"{root}/out/residual_add_weights",
        )
        out[f"{key}.out_res.proj.weight"] = _hwio(pool.take(name))
    for norm, scope in (("cell_norm", "cell/layer_norm"), ("out_norm", "out/layer_norm")):
        if getattr(cell, norm, None) is not None:
            out[f"{key}.{norm}.gamma"] = torch.from_numpy(pool.take(f"{root}/{scope}/gamma"))
            out[f"{key}.{norm}.beta"] = torch.from_numpy(pool.take(f"{root}/{scope}/beta"))


def _has_submodule(mod: nn.Module, name: str) -> bool:
    try:
        return mod.get_submodule(name) is not None
    except AttributeError:
        return False


def _cell(pool: _Pool, cell: nn.Module, base: str, key: str, out: dict[str, Tensor]) -> None:
    if isinstance(cell, TimeDecayCell):
        out[f"{key}.decay"] = torch.from_numpy(pool.take(f"{base}/memory_decay")).reshape(1)
    elif isinstance(cell, GRUCell):
        _conv(pool, cell.gates, f"{base}/ConvGRUCell/gates", out, f"{key}.gates")
        _conv(pool, cell.candidates, f"{base}/ConvGRUCell/candidates", out, f"{key}.candidates")
        if cell.norms is not None:
            for i, s in enumerate(("gates/r_pre", "gates/u_pre", "candidates/c_pre")):
                out[f"{key}.norms.{i}.gamma"] = torch.from_numpy(pool.take(f"{base}/ConvGRUCell/{s}/gamma"))
                out[f"{key}.norms.{i}.beta"] = torch.from_numpy(pool.take(f"{base}/ConvGRUCell/{s}/beta"))
    elif isinstance(cell, LSTMCell):
        root = f"{base}/ConvLSTMCell"
        _conv(pool, cell.conv, root, out, f"{key}.conv")
        if cell.norms is not None:
            for i, s in enumerate(("input", "transform", "forget", "output", "state")):
                out[f"{key}.norms.{i}.gamma"] = torch.from_numpy(pool.take(f"{root}/{s}/gamma"))
                out[f"{key}.norms.{i}.beta"] = torch.from_numpy(pool.take(f"{root}/{s}/beta"))
        if cell.peepholes:
            for g in ("f", "i", "o"):
                a = pool.take(f"{root}/peepholes/w_{g}_diag")
                out[f"{key}.w_{g}"] = torch.from_numpy(np.ascontiguousarray(np.transpose(a, (2, 0, 1))))
    elif isinstance(cell, UGRNNCell):
        _conv(pool, cell.conv, f"{base}/ConvUGRNNCell", out, f"{key}.conv")
    elif isinstance(cell, IntersectionRNNCell):
        _conv(pool, cell.conv, f"{base}/ConvIntersectionRNNCell", out, f"{key}.conv")
    elif isinstance(cell, SimpleRNNCell):
        root = f"{base}/ConvNormBasicCell"
        _conv(pool, cell.s, f"{root}/s", out, f"{key}.s")
        _conv(pool, cell.i, f"{root}/i", out, f"{key}.i")
        if cell.norm is not None:
            out[f"{key}.norm.gamma"] = torch.from_numpy(pool.take(f"{root}/layer_norm/gamma"))
            out[f"{key}.norm.beta"] = torch.from_numpy(pool.take(f"{root}/layer_norm/beta"))
    elif isinstance(cell, RGCCell):
        _rgc(pool, cell, base, key, out)
    elif any(True for _ in cell.parameters()):
        raise NameMapError(f"{key}: no TF name map for cell {type(cell).__name__}")


def _stage_indices(pool: _Pool, base: str, stage: str) -> list[int]:
    pat = re.compile(rf"^{re.escape(base)}/{stage}_(\d+)/")
    return sorted({int(m.group(1)) for k in pool.left if (m := pat.match(k))})


def _stage(pool: _Pool, ops: nn.ModuleList, base: str, stage: str, key: str, out: dict[str, Tensor]) -> None:
    """Pair the ops that hold parameters with the TF ``pre_<n>``/``post_<n>`` scopes, in order."""
    param_ops = [(j, op) for j, op in enumerate(ops) if any(True for _ in op.parameters())]
    scopes = _stage_indices(pool, base, stage)
    if len(scopes) != len(param_ops):
        raise NameMapError(
            f"{key}.{stage}: {len(param_ops)} ops with parameters but TF scopes {[f'{stage}_{n}' for n in scopes]}"
        )
    for (j, op), n in zip(param_ops, scopes, strict=True):
        scope = f"{base}/{stage}_{n}"
        k = f"{key}.{stage}.{j}"
        if isinstance(op, ConvOp):
            parts = [pool.take(f"{scope}/weights_basenet")] if pool.has(f"{scope}/weights_basenet") else []
            i = 0
            while pool.has(f"{scope}/weights_{i}"):
                parts.append(pool.take(f"{scope}/weights_{i}"))
                i += 1
            if not parts:
                parts = [pool.take(f"{scope}/weights")]
            out[f"{k}.conv.weight"] = _hwio(np.concatenate(parts, axis=2))
            if op.conv.bias is not None:
                out[f"{k}.conv.bias"] = torch.from_numpy(pool.take(f"{scope}/bias"))
        elif isinstance(op, LinearOp):
            out[f"{k}.fc.weight"] = torch.from_numpy(np.ascontiguousarray(pool.take(f"{scope}/weights").T))
            if op.fc.bias is not None:
                out[f"{k}.fc.bias"] = torch.from_numpy(pool.take(f"{scope}/bias"))
        elif isinstance(op, ResidualOp):
            out[f"{k}.add.proj.weight"] = _hwio(pool.take(f"{scope}/residual_add_weights"))
        else:
            raise NameMapError(f"{k}: no TF name map for {type(op).__name__}")


# Scalars the reference's temporal decoders create. ``compute_alpha`` makes two softmax temperatures
# whose output every decoder computes and then discards: they cannot change a prediction.
_DEAD_DECODER_SCALARS = ("probs/softmax_beta", "alpha/softmax_beta")


def _decoder(pool: _Pool, model: ConvRNN, prefix: str, out: dict[str, Tensor], frozen: dict[str, float]) -> None:
    """The max-confidence / threshold decoders' temperature and threshold (``dthresh``/``tmaxconf``):
    trainable ones into ``out``, frozen ones into ``frozen`` (set on the model once everything maps)."""
    for name in _DEAD_DECODER_SCALARS:
        if pool.has(f"{prefix}/{name}"):
            pool.take(f"{prefix}/{name}")
    dec = model.decoder
    for attr, tf_name in (("beta", "normalize/softmax_beta"), ("threshold", "decoder_threshold")):
        key = f"{prefix}/{tf_name}"
        value = getattr(dec, attr)
        if isinstance(value, nn.Parameter):
            out[f"decoder.{attr}"] = torch.from_numpy(pool.take(key)).reshape(1)
        elif pool.has(key) and dec.decoder in ("max_conf", "threshold"):
            arr = pool.take(key)
            if arr.size != 1:
                raise NameMapError(f"{key}: expected one value, the checkpoint has shape {arr.shape}")
            got = float(arr.reshape(-1)[0])
            if not math.isfinite(got):
                raise NameMapError(f"{key}: checkpoint has {got}, not a finite number")
            if attr == "threshold" and not 0.0 < got <= 1.0:
                raise NameMapError(f"{key}: checkpoint has {got}; a threshold on a softmax probability lies in (0, 1]")
            frozen[attr] = got


def set_decoder_scalars(model: ConvRNN, *, beta: float | None = None, threshold: float | None = None) -> None:
    """Set a model's frozen decoder temperature and/or threshold, on its decoder and in its spec.

    Only for scalars the model holds as constants (a trainable one is a parameter: load it as state).
    The spec is replaced by an updated copy, so a spec object shared with other models is not changed.
    """
    dec = model.decoder
    values = {k: v for k, v in (("beta", beta), ("threshold", threshold)) if v is not None}
    for attr in values:
        if isinstance(getattr(dec, attr), nn.Parameter):
            raise ValueError(f"{attr}: {model.spec.name!r} learns its decoder {attr}; load it as a parameter")
    if not values:
        return
    readout = dataclasses.replace(model.spec.readout, **values)
    model.spec = dataclasses.replace(model.spec, readout=readout).validate()
    for attr, v in values.items():
        setattr(dec, attr, float(v))


def tf_to_state_dict(model: ConvRNN, tf: Mapping[str, np.ndarray], prefix: str = PREFIX) -> dict[str, Tensor]:
    """Convert reference TF variables (name -> array) into ``model``'s state dict, one-to-one.

    Frozen decoder scalars in the checkpoint are not state: when everything maps, they are set on
    ``model`` (:func:`set_decoder_scalars`), so the model, and the spec saved with its weights, are the
    checkpoint's. Nothing on the model changes when the mapping fails.
    """
    pool = _Pool(tf)
    out: dict[str, Tensor] = {}
    frozen: dict[str, float] = {}
    problems = []
    for name, layer in model.layers.items():
        base, key = f"{prefix}/{name}", f"layers.{name}"
        # Keep going past a layer that does not match, so the error lists every mismatch at once.
        for fill, args in (
            (_stage, (pool, layer.pre, base, "pre", key, out)),
            (_cell, (pool, layer.cell, base, f"{key}.cell", out)),
            (_stage, (pool, layer.post, base, "post", key, out)),
        ):
            try:
                fill(*args)
            except NameMapError as e:
                problems.append(str(e))
    try:
        _decoder(pool, model, prefix, out, frozen)
    except NameMapError as e:
        problems.append(str(e))
    own = model.state_dict()
    if pool.left:
        problems.append(f"TF variables with no place in the model: {sorted(pool.left)}")
    missing = sorted(set(own) - set(out))
    if missing:
        problems.append(f"model entries the checkpoint does not fill: {missing}")
    for k, v in out.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            problems.append(f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(own[k].shape)}")
    if problems:
        raise NameMapError("; ".join(problems))
    set_decoder_scalars(model, **frozen)
    return {k: v.to(own[k].dtype) for k, v in out.items()}


def load_tf_weights(model: ConvRNN, tf: Mapping[str, np.ndarray], prefix: str = PREFIX) -> None:
    """Load reference TF variables into ``model``, frozen decoder scalars included (see :func:`tf_to_state_dict`)."""
    model.load_state_dict(tf_to_state_dict(model, tf, prefix))
