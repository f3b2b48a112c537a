"""Numpy references and small helpers shared by tests/test_ops.py and tests/cells/test_*.py.

Importable as ``numpy_ref`` from every test: pytest's default "prepend" import mode puts tests/ on
``sys.path`` (it holds conftest.py and test_ops.py). The references work in float64 and read none of
:mod:`convrnn`'s code; only :func:`build_cell` and :func:`cell_builder` touch the package.
"""

import numpy as np
import torch

from convrnn.cells import CellContext

TOL = 1e-5


def np_(t):
    return t.detach().double().numpy()


def np_conv(x, w, b=None, stride=1, pads=(0, 0, 0, 0)):
    """Cross-correlation of x (B,C,H,W) with w (O,C,kh,kw) after zero padding (top, bottom, left, right)."""
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    _, _, hh, ww = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (hh - kh) // stride + 1, (ww - kw) // stride + 1
    out = np.zeros((x.shape[0], o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", patch, w)
    if b is not None:
        out += b[None, :, None, None]
    return out


def conv_same(x, w, b=None):
    """Stride-1 TF SAME cross-correlation: k-1 zeros in total, the smaller half before."""
    kh, kw = w.shape[2:]
    th, tw = (kh - 1) // 2, (kw - 1) // 2
    return np_conv(x, w, b, pads=(th, kh - 1 - th, tw, kw - 1 - tw))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def elu(z):
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def layer_norm(z, gamma, beta, eps=1e-12):
    """TF layer norm of (B,C,H,W): per-sample mean and biased variance over (C,H,W), per-channel gamma, beta."""
    mean = z.mean(axis=(1, 2, 3), keepdims=True)
    var = ((z - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def norm_params(norm):
    """A TFLayerNorm's (gamma, beta) as float64 arrays, to pass on to :func:`layer_norm`."""
    return np_(norm.gamma), np_(norm.beta)


def randomise(cell, seed, scale=0.5):
    """Overwrite every parameter with N(0, scale^2) draws from ``default_rng(seed)``; returns the cell."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.from_numpy(rng.normal(0, scale, p.shape).astype(np.float32)))
    return cell


def rand(rng, *shape):
    return torch.from_numpy(rng.normal(size=shape).astype(np.float32))


def rands(seed, *shapes):
    """One standard-normal float32 tensor per shape, drawn in order from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return tuple(rand(rng, *shape) for shape in shapes)


def build_cell(cfg, in_ch=3, hw=(2, 2), res=None, fb=None):
    """``cfg`` built for an input of depth ``in_ch`` on an ``hw`` map, a residual of depth ``res``
    (default ``in_ch``) and feedback depths ``fb`` (a dict from entry point, default none)."""
    return cfg.build(CellContext(in_channels=in_ch, hw=hw, res_channels=res or in_ch, fb_channels=fb or {}))


def cell_builder(config, out=2):
    """``build(in_ch=3, out=out, kernel=1, hw=(2, 2), **kw)`` for a config class with ``out_channels`` and
    ``kernel`` fields (``out=None`` leaves the output depth to the config's default, the input's)."""

    def build(in_ch=3, out=out, kernel=1, hw=(2, 2), **kw):
        return build_cell(config(out_channels=out, kernel=kernel, **kw), in_ch, hw)

    return build
