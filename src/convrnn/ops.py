"""Low-level ops with the reference's (TensorFlow 1.x) semantics, in PyTorch's NCHW layout.

- TF "SAME" padding: total ``max((ceil(n/s)-1)*s + k - n, 0)``, the smaller half before. PyTorch's
  symmetric ``padding=k//2`` differs for even kernels and for stride 2 on even maps.
- SAME max-pool pads with -inf, so padded positions never win.
- Bilinear resizing with ``align_corners=True`` (TF's legacy ``resize_images``).
- LayerNorm as ``tf.contrib.layers.layer_norm``: per sample over (C, H, W), eps 1e-12, per-channel
  gain and shift.

Tensors here may carry a batch of 1 where every sample would be identical (activity driven by
biases alone, or a blank frame shared by the batch); :func:`cat_channels` expands such tensors before
concatenation, and every other op broadcasts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "elu": F.elu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


def activation(name: str | None) -> Callable[[Tensor], Tensor]:
    """Look up a pointwise nonlinearity by name (``None`` is the identity)."""
    if name is None:
        return ACTIVATIONS["identity"]
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})") from None


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one dimension of size ``n``."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def same_out(n: int, s: int) -> int:
    return math.ceil(n / s)


def valid_out(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1


def cat_channels(tensors: list[Tensor]) -> Tensor:
    """Concatenate on channels, expanding batch-1 tensors to the largest batch."""
    if len(tensors) == 1:
        return tensors[0]
    b = max(t.shape[0] for t in tensors)
    return torch.cat([t.expand(b, *t.shape[1:]) if t.shape[0] != b else t for t in tensors], dim=1)


def expand_batch(t: Tensor, b: int) -> Tensor:
    return t if t.shape[0] == b else t.expand(b, *t.shape[1:])


def resize_to(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Bilinear resize with ``align_corners=True``; the identity where sizes already match."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=True)


class SameConv2d(nn.Module):
    """Conv2d with TF "SAME" or "VALID" padding; weight layout OIHW, optional bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        bias: bool = True,
        padding: str = "same",
        groups: int = 1,
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.kernel = (kh, kw)
        self.stride = stride
        self.padding = padding
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.apply_to(x, self.weight, self.bias)

    def apply_to(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """This convolution's geometry (kernel, stride, padding, groups) with other weights."""
        if self.padding == "valid":
            return F.conv2d(x, weight, bias, self.stride, 0, 1, self.groups)
        (kh, kw), s = self.kernel, self.stride
        ph = same_padding(x.shape[-2], kh, s)
        pw = same_padding(x.shape[-1], kw, s)
        if ph[0] == ph[1] and pw[0] == pw[1]:
            # Symmetric: let the conv kernel pad (no extra copy of the input).
            return F.conv2d(x, weight, bias, s, (ph[0], pw[0]), 1, self.groups)
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, weight, bias, s, 0, 1, self.groups)

    def geometry(self) -> tuple:
        """What two convolutions must share to run as one: kernel, stride, padding, groups, input depth."""
        return (self.kernel, self.stride, self.padding, self.groups, self.weight.shape[1])

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i * self.groups}, {o}, kernel={kh}x{kw}, stride={self.stride}, {self.padding}, bias={self.bias is not None}"


class FusedConv:
    """Convolutions that read the same input, run as one: their kernels concatenated along the
    output channels (and their biases, zeros standing in for a missing one), the output split back.

    Each output channel is the same sum over the same products as in its own convolution; only the
    kernel's blocking may change the order of that sum (differences at float rounding). The kernels
    are concatenated at the first call (one per unroll) from the live parameters, so gradients flow
    back to each convolution's own weights.
    """

    def __init__(self, convs: list[SameConv2d]) -> None:
        if not fusable(convs):
            raise ValueError("FusedConv: the convolutions differ in kernel, stride, padding, groups or input depth")
        self.convs = convs
        self.sizes = [c.weight.shape[0] for c in convs]
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def __call__(self, x: Tensor) -> list[Tensor]:
        # Concatenated on first use, then reused for every step. Built again where a graph is
        # wanted but the first build ran without one: checkpointing in segments runs the forward
        # pass without gradients and each segment again with them.
        stale = self.weight is not None and self.weight.grad_fn is None and torch.is_grad_enabled()
        if self.weight is None or (stale and any(c.weight.requires_grad for c in self.convs)):
            convs = self.convs
            self.weight = torch.cat([c.weight for c in convs])
            if any(c.bias is not None for c in convs):
                zeros = self.weight.new_zeros
                self.bias = torch.cat([zeros(n) if c.bias is None else c.bias for c, n in zip(convs, self.sizes)])
        return list(self.convs[0].apply_to(x, self.weight, self.bias).split(self.sizes, dim=1))

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles (e.g. ``copy.deepcopy`` of a model) concatenate afresh: the built
        # weight is part of an autograd graph, which cannot be copied.
        return {**self.__dict__, "weight": None, "bias": None}


def fusable(convs: list[nn.Module | None]) -> bool:
    """Whether these modules are plain (not separable) convolutions of one geometry."""
    if len(convs) < 2 or not all(type(c) is SameConv2d for c in convs):
        return False
    return len({c.geometry() for c in convs}) == 1  # type: ignore[union-attr]


class SeparableConv2d(nn.Module):
    """Depthwise kxk (SAME) + pointwise 1x1 + bias, as TF's ``separable_conv2d``.

    ``repeat`` adds the reference's ``ds_repeat``: an extra depthwise conv and ELU in front.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        bias: bool = True,
        repeat: bool = False,
    ) -> None:
        super().__init__()
        self.depthwise0 = (
            SameConv2d(in_channels, in_channels, kernel, bias=False, groups=in_channels) if repeat else None
        )
        self.depthwise = SameConv2d(in_channels, in_channels, kernel, bias=False, groups=in_channels)
        self.pointwise = SameConv2d(in_channels, out_channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.depthwise0 is not None:
            x = F.elu(self.depthwise0(x))
        x = self.pointwise(self.depthwise(x))
        return x if self.bias is None else x + self.bias.view(1, -1, 1, 1)


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel: int | tuple[int, int],
    hw: tuple[int, int],
    *,
    separable: bool = False,
    bias: bool = True,
    repeat: bool = False,
) -> nn.Module:
    """A stride-1 SAME conv inside a cell, its kernel clamped to the map ``hw`` as the reference does."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    k = (min(kh, hw[0]), min(kw, hw[1]))
    if separable:
        return SeparableConv2d(in_channels, out_channels, k, bias=bias, repeat=repeat)
    return SameConv2d(in_channels, out_channels, k, bias=bias)


def max_pool_same(x: Tensor, k: int, s: int) -> Tensor:
    ph = same_padding(x.shape[-2], k, s)
    pw = same_padding(x.shape[-1], k, s)
    if any(ph) or any(pw):
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=-math.inf)
    return F.max_pool2d(x, k, s)


class TFLayerNorm(nn.Module):
    """``tf.contrib.layers.layer_norm``: normalise each sample over (C, H, W), per-channel gain/shift."""

    def __init__(self, channels: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.gamma.view(shape) + self.beta.view(shape)


class ResidualAdd(nn.Module):
    """``out + P(r)``, as the reference's ``residual_add``.

    P is the identity where shapes match; a bias-free 1x1 projection where channels differ; and,
    where the spatial size differs, a bilinear resize (``align_corners=True``) followed by the
    projection (always present then, as in the reference). Whether channels differ is known when the
    layer is built; a spatial mismatch (the projection) must also be declared then via ``resize``.
    """

    def __init__(self, res_channels: int, out_channels: int, resize: bool = False) -> None:
        super().__init__()
        project = res_channels != out_channels or resize
        self.proj = SameConv2d(res_channels, out_channels, 1, bias=False) if project else None

    def forward(self, out: Tensor, res: Tensor) -> Tensor:
        if self.proj is None:
            return out + res
        return out + self.proj(resize_to(res, tuple(out.shape[-2:])))
