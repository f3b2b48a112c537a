"""Low-level ops against independent numpy references (TF 1.x semantics).

Each reference here pads, pools, resizes and normalises by hand, with the padding amounts written out
rather than taken from :func:`convrnn.ops.same_padding`, so a wrong padding rule shows up as a mismatch.
"""

import numpy as np
import pytest
import torch
from numpy_ref import TOL, layer_norm, np_, np_conv, rand

from convrnn.ops import (
    ResidualAdd,
    SameConv2d,
    SeparableConv2d,
    TFLayerNorm,
    activation,
    cat_channels,
    make_conv,
    max_pool_same,
    resize_to,
    same_padding,
)


def set_(param, value):
    with torch.no_grad():
        param.copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))


@pytest.mark.parametrize(
    ("n", "k", "s", "expected"),
    [
        (224, 7, 2, (2, 3)),  # the stem conv: more padding after than before
        (5, 2, 1, (0, 1)),  # even kernel: all of it after
        (5, 4, 1, (1, 2)),
        (5, 3, 1, (1, 1)),
        (6, 1, 1, (0, 0)),
        (5, 2, 2, (0, 1)),  # SAME pooling of an odd map
        (6, 2, 2, (0, 0)),
    ],
)
def test_same_padding_values(n, k, s, expected):
    """TF SAME padding: total max((ceil(n/s)-1)s + k - n, 0), the smaller half before."""
    assert same_padding(n, k, s) == expected


@pytest.mark.parametrize(
    ("kernel", "stride", "n", "pads", "out_n"),
    [
        (2, 1, 5, (0, 1, 0, 1), 5),  # even kernel, stride 1
        (4, 1, 5, (1, 2, 1, 2), 5),  # even kernel, uneven split
        (7, 2, 6, (2, 3, 2, 3), 3),  # 7x7/2 on an even map (the stem conv)
        (3, 1, 4, (1, 1, 1, 1), 4),  # symmetric case (handled by conv2d's own padding)
    ],
)
def test_same_conv_matches_numpy_reference(kernel, stride, n, pads, out_n):
    """SameConv2d pads like TF (not PyTorch's symmetric k//2) and keeps ceil(n/s) outputs."""
    rng = np.random.default_rng(kernel * 10 + stride)
    conv = SameConv2d(2, 3, kernel, stride=stride)
    set_(conv.weight, rng.normal(size=conv.weight.shape))
    set_(conv.bias, rng.normal(size=3))
    x = rng.normal(size=(2, 2, n, n)).astype(np.float32)
    out = conv(torch.from_numpy(x))
    assert out.shape == (2, 3, out_n, out_n)
    expected = np_conv(x.astype(np.float64), np_(conv.weight), np_(conv.bias), stride, pads)
    np.testing.assert_allclose(np_(out), expected, atol=TOL, rtol=TOL)


def test_same_conv_valid_padding_and_no_bias():
    """padding='valid' pads nothing; bias=False leaves no bias parameter."""
    rng = np.random.default_rng(1)
    conv = SameConv2d(2, 1, 3, bias=False, padding="valid")
    assert conv.bias is None
    set_(conv.weight, rng.normal(size=conv.weight.shape))
    x = rng.normal(size=(1, 2, 5, 4)).astype(np.float32)
    out = conv(torch.from_numpy(x))
    np.testing.assert_allclose(np_(out), np_conv(x.astype(np.float64), np_(conv.weight)), atol=TOL, rtol=TOL)


def test_max_pool_same_pads_with_minus_infinity():
    """2x2/2 SAME pooling of a 5x5 map gives 3x3; padded cells (after only) never win, even over negatives."""
    rng = np.random.default_rng(2)
    x = -(rng.uniform(1.0, 2.0, size=(2, 3, 5, 5))).astype(np.float32)  # all negative: a zero pad would win
    out = max_pool_same(torch.from_numpy(x), 2, 2)
    assert out.shape == (2, 3, 3, 3)
    expected = np.empty((2, 3, 3, 3), dtype=np.float32)
    for i in range(3):
        for j in range(3):
            # Windows start at 2i, 2j; slicing clips at the edge, i.e. only real pixels compete.
            expected[:, :, i, j] = x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(2, 3))
    np.testing.assert_array_equal(out.numpy(), expected)
    assert (out < 0).all()


def test_max_pool_same_odd_kernel_pads_both_sides():
    """3x3/2 SAME pooling of a 6x6 map pads (0, 1); of a 5x5 map (1, 1); never with zeros."""
    rng = np.random.default_rng(3)
    for n, before in ((6, 0), (5, 1)):
        x = -(rng.uniform(1.0, 2.0, size=(1, 1, n, n))).astype(np.float32)
        out = max_pool_same(torch.from_numpy(x), 3, 2)
        m = -(-n // 2)
        assert out.shape == (1, 1, m, m)
        # Pad generously after: extra -inf cells cannot change a max, a missing one would break the window.
        padded = np.pad(x, ((0, 0), (0, 0), (before, 3), (before, 3)), constant_values=-np.inf)
        expected = np.empty((1, 1, m, m), dtype=np.float32)
        for i in range(m):
            for j in range(m):
                expected[..., i, j] = padded[..., 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(2, 3))
        np.testing.assert_array_equal(out.numpy(), expected)


def test_resize_to_is_identity_when_sizes_match():
    """No resampling at all (the very same tensor) when the map already has the target size."""
    x = torch.randn(2, 3, 4, 5)
    assert resize_to(x, (4, 5)) is x


def np_bilinear_align_corners(x, hw):
    """Bilinear resize with align_corners=True: output i samples input i*(n_in-1)/(n_out-1)."""
    _, _, h, w = x.shape
    oh, ow = hw
    out = np.zeros((*x.shape[:2], oh, ow))
    for i in range(oh):
        sy = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(ow):
            sx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = (1 - fx) * x[..., y0, x0] + fx * x[..., y0, x1]
            bot = (1 - fx) * x[..., y1, x0] + fx * x[..., y1, x1]
            out[..., i, j] = (1 - fy) * top + fy * bot
    return out


@pytest.mark.parametrize(("src", "dst"), [((3, 3), (5, 5)), ((5, 5), (3, 3)), ((2, 3), (4, 6))])
def test_resize_to_is_align_corners_bilinear(src, dst):
    """Matches a numpy align_corners=True bilinear resize; the four corners are copied exactly.

    Downsampling 5 -> 3 distinguishes align_corners=True (samples 0, 2, 4) from the half-pixel rule.
    """
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 2, *src)).astype(np.float32)
    out = resize_to(torch.from_numpy(x), dst).numpy()
    assert out.shape == (2, 2, *dst)
    np.testing.assert_allclose(out, np_bilinear_align_corners(x.astype(np.float64), dst), atol=TOL, rtol=TOL)
    for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        np.testing.assert_array_equal(out[..., i, j], x[..., i, j])


def test_tf_layer_norm_matches_numpy():
    """Per-sample mean/variance over (C, H, W) (biased variance), per-channel gain and shift."""
    rng = np.random.default_rng(5)
    norm = TFLayerNorm(3)
    set_(norm.gamma, [0.5, -1.5, 2.0])
    set_(norm.beta, [0.1, 0.0, -0.7])
    # Two samples on very different scales: a batch-wide statistic would not reproduce this.
    x = (
        rng.normal(size=(2, 3, 2, 3)) * np.array([1.0, 10.0])[:, None, None, None]
        + np.array([0.0, 5.0])[:, None, None, None]
    )
    x = x.astype(np.float32)
    out = norm(torch.from_numpy(x))
    expected = layer_norm(x.astype(np.float64), np_(norm.gamma), np_(norm.beta))
    np.testing.assert_allclose(np_(out), expected, atol=TOL, rtol=TOL)


def test_tf_layer_norm_eps_is_tiny():
    """eps is 1e-12 (TF), not PyTorch's 1e-5: a sample with variance 1e-6 still normalises to unit variance."""
    norm = TFLayerNorm(2)
    assert norm.eps == 1e-12
    rng = np.random.default_rng(6)
    x = (1e-3 * rng.normal(size=(1, 2, 3, 3))).astype(np.float32)
    out = np_(norm(torch.from_numpy(x)))
    np.testing.assert_allclose(out.var(), 1.0, rtol=1e-3)
    np.testing.assert_allclose(out.mean(), 0.0, atol=1e-5)


def test_tf_layer_norm_is_per_sample():
    """Changing one sample of the batch leaves the other's output untouched."""
    norm = TFLayerNorm(2)
    x = torch.randn(2, 2, 3, 3)
    y = x.clone()
    y[1] = 100 * y[1] + 3
    assert torch.allclose(norm(x)[0], norm(y)[0], atol=1e-6)


def test_cat_channels_expands_batch_one():
    """A batch-1 tensor is broadcast to the batch of the others before concatenating on channels."""
    a = torch.arange(8.0).view(1, 2, 2, 2)
    b = torch.randn(3, 1, 2, 2)
    out = cat_channels([a, b])
    assert out.shape == (3, 3, 2, 2)
    for i in range(3):
        assert torch.equal(out[i, :2], a[0])
        assert torch.equal(out[i, 2:], b[i])
    # Order of the arguments is the order of the channels, whichever carries the batch.
    out2 = cat_channels([b, a])
    assert torch.equal(out2[:, :1], b)
    assert torch.equal(out2[:, 1:], a.expand(3, 2, 2, 2))


def test_cat_channels_single_tensor_passes_through():
    a = torch.randn(1, 2, 2, 2)
    assert cat_channels([a]) is a


def test_separable_conv_is_depthwise_pointwise_bias():
    """With a 1x1 depthwise kernel: out = P @ (d . x) + b, channel by channel."""
    rng = np.random.default_rng(7)
    conv = SeparableConv2d(3, 2, 1)
    assert conv.depthwise.weight.shape == (3, 1, 1, 1)
    assert conv.pointwise.weight.shape == (2, 3, 1, 1)
    d = rng.normal(size=3)
    p = rng.normal(size=(2, 3))
    b = rng.normal(size=2)
    set_(conv.depthwise.weight, d.reshape(3, 1, 1, 1))
    set_(conv.pointwise.weight, p.reshape(2, 3, 1, 1))
    set_(conv.bias, b)
    x = rng.normal(size=(2, 3, 2, 3)).astype(np.float32)
    out = conv(torch.from_numpy(x))
    xd = x.astype(np.float64) * np_(conv.depthwise.weight).reshape(1, 3, 1, 1)
    expected = (
        np.einsum("oc,bchw->bohw", np_(conv.pointwise.weight)[:, :, 0, 0], xd) + np_(conv.bias)[None, :, None, None]
    )
    np.testing.assert_allclose(np_(out), expected, atol=TOL, rtol=TOL)


def test_separable_conv_even_depthwise_kernel_uses_tf_padding():
    """A 2x2 depthwise kernel pads (0, 1) on each axis, each channel on its own."""
    rng = np.random.default_rng(8)
    conv = SeparableConv2d(2, 3, 2, bias=False)
    assert conv.bias is None
    set_(conv.depthwise.weight, rng.normal(size=(2, 1, 2, 2)))
    set_(conv.pointwise.weight, rng.normal(size=(3, 2, 1, 1)))
    x = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
    out = conv(torch.from_numpy(x))
    dw = np_(conv.depthwise.weight)
    xd = np.concatenate(
        [np_conv(x[:, c : c + 1].astype(np.float64), dw[c : c + 1], pads=(0, 1, 0, 1)) for c in range(2)], axis=1
    )
    expected = np.einsum("oc,bchw->bohw", np_(conv.pointwise.weight)[:, :, 0, 0], xd)
    np.testing.assert_allclose(np_(out), expected, atol=TOL, rtol=TOL)


def test_make_conv_clamps_kernel_to_map():
    """Kernels larger than the map are clamped per axis; smaller ones are kept; flags pass through."""
    conv = make_conv(2, 3, 7, (3, 5))
    assert isinstance(conv, SameConv2d)
    assert conv.weight.shape == (3, 2, 3, 5)
    assert conv.bias is not None
    assert make_conv(2, 3, (1, 7), (3, 5), bias=False).weight.shape == (3, 2, 1, 5)
    assert make_conv(2, 3, (1, 7), (3, 5), bias=False).bias is None
    assert make_conv(2, 3, 3, (6, 6)).weight.shape == (3, 2, 3, 3)
    sep = make_conv(2, 3, 7, (3, 3), separable=True)
    assert isinstance(sep, SeparableConv2d)
    assert sep.depthwise.weight.shape == (2, 1, 3, 3)
    assert sep.depthwise0 is None
    rep = make_conv(2, 3, 7, (2, 2), separable=True, repeat=True)
    assert rep.depthwise0 is not None
    assert rep.depthwise0.weight.shape == (2, 1, 2, 2)


def test_residual_add_identity_and_projection():
    """out + r when channels match; out + W r with a bias-free 1x1 W when they differ."""
    rng = np.random.default_rng(9)
    out = rand(rng, 2, 2, 3, 3)
    same = ResidualAdd(2, 2)
    assert same.proj is None
    r2 = rand(rng, 2, 2, 3, 3)
    assert torch.equal(same(out, r2), out + r2)

    proj = ResidualAdd(3, 2)
    assert proj.proj is not None
    assert proj.proj.bias is None
    w = rng.normal(size=(2, 3))
    set_(proj.proj.weight, w.reshape(2, 3, 1, 1))
    r3 = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    expected = np_(out) + np.einsum("oc,bchw->bohw", np_(proj.proj.weight)[:, :, 0, 0], r3.astype(np.float64))
    np.testing.assert_allclose(np_(proj(out, torch.from_numpy(r3))), expected, atol=TOL, rtol=TOL)


def test_residual_add_resize_always_projects():
    """A declared spatial mismatch resizes (align_corners=True) and projects even when channels match."""
    rng = np.random.default_rng(10)
    add = ResidualAdd(2, 2, resize=True)
    assert add.proj is not None
    w = rng.normal(size=(2, 2))
    set_(add.proj.weight, w.reshape(2, 2, 1, 1))
    out = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
    r = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    got = add(torch.from_numpy(out), torch.from_numpy(r))
    rr = np_bilinear_align_corners(r.astype(np.float64), (3, 3))
    expected = out + np.einsum("oc,bchw->bohw", np_(add.proj.weight)[:, :, 0, 0], rr)
    np.testing.assert_allclose(np_(got), expected, atol=TOL, rtol=TOL)


def test_activation_lookup():
    """Names map to the right functions; None is the identity; unknown names raise ValueError."""
    z = torch.tensor([-1.0, 0.5])
    assert torch.equal(activation(None)(z), z)
    assert torch.allclose(activation("elu")(z), torch.tensor([np.expm1(-1.0), 0.5], dtype=torch.float32))
    assert torch.equal(activation("relu")(z), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="swish"):
        activation("swish")
