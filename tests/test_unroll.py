"""Unrolling in time: the reference's timing, presentations, and fast == naive."""

import pytest
import torch

import convrnn
from convrnn.cells import RGCCell
from convrnn.data.presentation import make_stimulus
from convrnn.graph import Layer
from convrnn.memory import peak_memory_bytes
from convrnn.unroll import last_needed_steps


def _tiny(name, **kw):
    torch.manual_seed(0)
    model = convrnn.create_model(name, num_classes=4, image_size=32, width=0.0625, **kw)
    # Non-zero biases and decays: pre-stimulus activity is then non-trivial (and batch-independent).
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or n.endswith("decay") or n.endswith("beta"):
                p.normal_(0, 0.1)
    return model


def assert_same(a, b, what=""):
    """Equal to 1e-5 relative to the tensors' scale: the two schedules sum in different orders
    (a batch of 1 vs B picks other kernels), and float32 rounding grows with the activity."""
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max |diff| {err:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("name", convrnn.list_models())
def test_fast_schedule_equals_naive_forward_and_gradients(name):
    # In float64 the two schedules' rounding differences vanish (~1e-12), so any difference is a
    # difference in the math; the float32 case is checked below.
    fast = _tiny(name).double()
    naive = _tiny(name, fast=False).double()
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    out_f, out_n = fast(x, times=14), naive(x, times=14)
    assert_same(out_f.logits, out_n.logits, "logits")
    out_f.logits[-1].square().sum().backward()
    out_n.logits[-1].square().sum().backward()
    for (n, a), (_, b) in zip(fast.named_parameters(), naive.named_parameters()):
        if n.startswith("decoder."):  # chooses a step (argmax): no gradient either way
            assert a.grad is None and b.grad is None
            continue
        assert_same(a.grad, b.grad, n)


def test_fast_schedule_with_frozen_zero_decay_and_features_equals_naive():
    """The zoo's default frozen a = 0 memories take the pass-through path; features too."""
    torch.manual_seed(1)
    fast = convrnn.create_model("rgc_intermediate", num_classes=4, image_size=32, width=0.125)
    naive = convrnn.create_model("rgc_intermediate", num_classes=4, image_size=32, width=0.125, fast=False)
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for presentation in ("default", "neural", "constant"):
        a = fast.features(x, areas=["conv3", "IT", "imnetds"], times=range(5, 20), presentation=presentation)
        b = naive.features(x, areas=["conv3", "IT", "imnetds"], times=range(5, 20), presentation=presentation)
        for area in a:
            for t in a[area]:
                assert_same(a[area][t], b[area][t], f"{presentation} {area} t={t}")


@pytest.mark.parametrize("fast", [True, False])
def test_each_layers_last_needed_step_computes_its_output_alone(monkeypatch, fast):
    """The fast schedule runs each layer's last needed step as Cell.output (no new state): once per
    layer, at the step last_needed_steps gives; the naive schedule never."""
    model = _tiny("rgc_shallow", fast=fast)
    step = dict.fromkeys(model.layers, -1)  # each layer's current step
    seen: list[tuple[str, int]] = []
    forward, output = Layer.forward, RGCCell.output

    def counting_forward(layer, *args, **kw):
        step[layer.name] += 1
        return forward(layer, *args, **kw)

    def recording_output(cell, prepared, state):
        name = next(n for n, layer in model.layers.items() if layer.cell is cell)
        seen.append((name, step[name]))
        return output(cell, prepared, state)

    monkeypatch.setattr(Layer, "forward", counting_forward)
    monkeypatch.setattr(RGCCell, "output", recording_output)
    model(torch.randn(2, 3, 32, 32), times=9)
    rgc = [n for n, layer in model.layers.items() if isinstance(layer.cell, RGCCell)]
    assert len(rgc) >= 2
    last = last_needed_steps(model.spec, {"imnetds": 8}, "biological")
    assert sorted(seen) == (sorted((n, last[n]) for n in rgc) if fast else [])


@pytest.mark.parametrize("name", ["rgc_shallow", "rgc_intermediate", "ugrnn_intermediate"])
def test_first_stimulus_step_matches_reference_timing(name):
    """conv_k first sees the stimulus at step k-1, the readout at 5 (shallow) / 10 (intermediate)."""
    model = _tiny(name)
    n = len([layer for layer in model.layers if layer.startswith("conv")])
    expected = {f"conv{k}": k - 1 for k in range(1, n + 1)} | {"imnetds": n}
    assert model.first_stimulus_steps() == expected
    # Empirically: outputs for two different images are identical before that step, differ from it.
    x = torch.randn(2, 3, 32, 32)
    feats = model.features(x, times=n + 2)
    for layer, first in expected.items():
        for t in range(n + 2):
            differs = not torch.equal(feats[layer][t][0], feats[layer][t][1])
            assert differs == (t >= first), (layer, t)


def test_standard_unroll_drives_every_layer_at_step_zero():
    model = _tiny("rgc_intermediate", unroll="standard")
    assert set(model.first_stimulus_steps().values()) == {0}
    feats = model.features(torch.randn(2, 3, 32, 32), areas=["imnetds"], times=2)
    assert not torch.equal(feats["imnetds"][0][0], feats["imnetds"][0][1])
    naive = _tiny("rgc_intermediate", unroll="standard", fast=False)
    naive.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert_same(model(x).logits, naive(x).logits, "standard unroll logits")


def test_unroll_longer_than_built_and_presentations():
    model = _tiny("rgc_shallow")
    x = torch.randn(2, 3, 32, 32)
    assert model(x).logits.shape[0] == 16  # the spec's default steps
    assert model(x, presentation="neural").logits.shape[0] == 26
    assert model(x, times=40).logits.shape[0] == 40
    video = x.unsqueeze(1).expand(2, 9, 3, 32, 32)
    const = model(x, times=9, presentation="constant").logits
    torch.testing.assert_close(model(video).logits, const)
    # The default presentation equals a video of the image for 12 steps, then the 0.5 blank.
    frames = torch.cat([video[:, :1].expand(2, 12, 3, 32, 32), torch.full((2, 4, 3, 32, 32), 0.5)], dim=1)
    torch.testing.assert_close(model(frames).logits, model(x).logits)
    with pytest.raises(ValueError, match="video has 9 frames"):
        model(video, times=10)
    with pytest.raises(ValueError, match="expected 3 channels"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"built for 32x32 inputs, got 48x48 \(create it with image_size=48\)"):
        model(torch.randn(2, 3, 48, 48))
    with pytest.raises(ValueError, match="unknown 'flash'"):
        model(x, presentation="flash")


def test_presentation_schedules():
    x = torch.randn(2, 3, 8, 8)
    stim, implied = make_stimulus(x, "neural")
    assert implied == 26 and stim.image_off == 10
    assert stim.frame(9) is x and stim.frame(10).shape == (1, 3, 8, 8)
    assert (stim.frame(10) == 0.5).all()
    stim, implied = make_stimulus(x, "default", blank=-1.0)
    assert implied is None and stim.image_off == 12 and (stim.frame(12) == -1.0).all()
    stim, _ = make_stimulus(x, "constant")
    assert all(stim.frame(t) is x for t in range(50))


def test_needed_steps_for_a_last_step_readout():
    spec = convrnn.model_spec("rgc_shallow")
    last = last_needed_steps(spec, {"imnetds": 15}, "biological")
    assert last == {"conv1": 10, "conv2": 11, "conv3": 12, "conv4": 13, "conv5": 14, "imnetds": 15}
    spec = convrnn.model_spec("rgc_intermediate")
    last = last_needed_steps(spec, {"conv5": 8}, "biological")
    # conv8 -> conv5 directly; conv10 -> conv7 -> conv8 -> conv5; conv9 -> conv6 -> conv7 -> conv8 -> conv5.
    assert last["conv4"] == 7 and last["conv8"] == 7 and last["conv10"] == 5 and last["conv9"] == 4


def test_features_api_and_time_windows():
    model = _tiny("rgc_intermediate")
    x = torch.randn(2, 3, 32, 32)
    feats = model.features(x, areas=["conv3", "V4", "IT"], times=range(16))
    assert set(feats) == {"conv3", "V4", "IT"} and list(feats["conv3"]) == list(range(16))
    assert feats["conv3"][0].dim() == 4
    layers = model.features(x, areas=["conv5", "conv6"], times=[7])
    v4 = torch.cat([layers["conv5"][7].flatten(1), layers["conv6"][7].flatten(1)], 1)
    torch.testing.assert_close(feats["V4"][7], v4)
    assert model.step_window_ms(3) == (30.0, 40.0)
    with pytest.raises(KeyError, match="unknown area 'V1'"):
        model.features(x, areas=["V1"])


def test_batchnorm_is_shared_over_time_and_keeps_fast_equal_to_naive():
    """BatchNorm (one set of statistics for all steps) in train and eval mode."""
    spec = convrnn.model_spec("rgc_shallow", num_classes=4, image_size=32, width=0.0625)
    for layer in spec.layers[:3]:
        layer.pre[0].batch_norm = True
    fast = convrnn.create_model(spec)
    naive = convrnn.create_model(spec, fast=False)
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert_same(fast(x, times=20).logits, naive(x, times=20).logits, "train mode")  # beyond 16 steps
    torch.testing.assert_close(fast.state_dict(), naive.state_dict())  # same running statistics
    fast.eval(), naive.eval()
    assert_same(fast(x).logits, naive(x).logits, "eval mode")


def _pair(name, fuse=False, **kw):
    """The fast model in channels-last memory (as trained with --channels-last), with the RGC's
    fused gate convolutions if ``fuse``, and the naive model with the same weights in NCHW."""
    fast = _tiny(name, **kw).to(memory_format=torch.channels_last)
    for m in fast.modules():
        if isinstance(m, convrnn.cells.RGCCell):
            m.fuse_convs = fuse
    naive = _tiny(name, fast=False, **kw)
    naive.load_state_dict(fast.state_dict())
    return fast, naive


def _train_grads(model, x, times=14, autocast=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(x, times=times).logits
    logits.float()[-1].square().sum().backward()
    return logits.float(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["rgc_shallow", "rgc_intermediate", "lstm_shallow"])
def test_fast_channels_last_equals_naive(name, dtype):
    """Every optimisation on (channels-last memory, the fused gate convolutions) against the naive
    NCHW unroll. float64: logits and gradients to 1e-5 (differences in
    the math would show; rounding is ~1e-12). float32: logits to 1e-5; gradients to 1e-3 of their
    scale, as float32 rounding alone moves them 1.4e-4 (the naive schedule's float32 gradients
    against its float64 ones, rgc_intermediate, 14 steps)."""
    fast, naive = (m.to(dtype) for m in _pair(name, fuse=True))
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    out_f, g_f = _train_grads(fast, x.contiguous(memory_format=torch.channels_last))
    out_n, g_n = _train_grads(naive, x)
    if name.startswith("rgc"):
        fused = [m._fused for m in fast.modules() if isinstance(m, convrnn.cells.RGCCell)]
        assert any(f and all(c.weight is not None for c in f.values()) for f in fused) == (name == "rgc_shallow")
    assert_same(out_f, out_n, "logits")
    assert g_f.keys() == g_n.keys()
    for n in g_n:
        if dtype == torch.float64:
            assert_same(g_f[n], g_n[n], n)
        else:
            scale = max(1.0, g_n[n].abs().max().item())
            assert (g_f[n] - g_n[n]).abs().max().item() <= 1e-3 * scale, n


@pytest.mark.parametrize("name", ["rgc_shallow", "rgc_intermediate", "gru_intermediate"])
def test_fast_bf16_autocast_is_close_to_naive_float32(name):
    """bf16 autocast (8-bit mantissas in the convolutions) stays within 5% of the logits' scale of
    the float32 naive unroll (measured: at most 0.3% for rgc_shallow, 2.8% for rgc_intermediate)."""
    fast, naive = _pair(name)
    x = torch.randn(3, 3, 32, 32)
    out_f, _ = _train_grads(fast, x.contiguous(memory_format=torch.channels_last), autocast=True)
    with torch.no_grad():
        out_n = naive(x, times=14).logits
    scale = max(1.0, out_n.abs().max().item())
    err = (out_f - out_n).abs().max().item()
    assert err <= 5e-2 * scale, f"bf16 logits: max |diff| {err:.3g} at scale {scale:.3g}"
    assert err > 0  # bf16 did run


@pytest.mark.parametrize("name", ["rgc_shallow", "rgc_intermediate"])
def test_grad_checkpointing_gives_the_same_gradients(name):
    """Activation checkpointing recomputes each layer's step in the backward pass: same numbers
    (the recomputation runs the very same ops), in NCHW and channels-last, at T beyond the default."""
    model = _tiny(name)
    x = torch.randn(2, 3, 32, 32)
    for layout in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=layout)
        xl = x.contiguous(memory_format=layout)
        model.set_grad_checkpointing(False)
        out_a, g_a = _train_grads(model, xl, times=20)
        g_a = {n: g.clone() for n, g in g_a.items()}
        model.set_grad_checkpointing(True)
        out_b, g_b = _train_grads(model, xl, times=20)
        torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
        assert g_a.keys() == g_b.keys()
        for n in g_a:
            torch.testing.assert_close(g_b[n], g_a[n], rtol=1e-6, atol=1e-7, msg=n)
    with torch.no_grad():  # no graph, nothing to checkpoint
        torch.testing.assert_close(model(xl, times=20).logits, out_a)


def test_grad_checkpointing_leaves_batchnorm_layers_alone_in_training():
    """Recomputing a BatchNorm step in training mode would update its running statistics twice: those
    layers are not checkpointed, and the statistics match a model without checkpointing."""
    spec = convrnn.model_spec("rgc_shallow", num_classes=4, image_size=32, width=0.0625)
    for layer in spec.layers[:3]:
        layer.pre[0].batch_norm = True
    plain = convrnn.create_model(spec)
    ckpt = convrnn.create_model(spec)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True, segment_steps=3)  # segments are left out too
    x = torch.randn(4, 3, 32, 32)
    out_a, g_a = _train_grads(plain, x, times=10)
    out_b, g_b = _train_grads(ckpt, x, times=10)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(ckpt.state_dict(), plain.state_dict())  # running statistics included
    for n in g_a:
        torch.testing.assert_close(g_b[n], g_a[n], rtol=1e-6, atol=1e-7, msg=n)


def _grads_with_input(model, x, times, loss_steps=slice(-1, None)):
    """Logits, parameter gradients and the input's gradient of a loss on the given steps."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    logits = model(x, times=times).logits
    logits[loss_steps].square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, x.grad


@pytest.mark.parametrize("name", ["rgc_shallow", "rgc_intermediate"])
def test_segment_checkpointing_gives_the_same_gradients(name):
    """Checkpointed segments run each segment again in the backward pass: the same logits, and the
    same gradients of the weights and of the images (float64: only the order of additions differs,
    as a weight's gradient is summed over segments), for segments of 1 step, uneven ones, one
    segment and one longer than the unroll; with the loss on the last step or on every step."""
    model = _tiny(name).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for loss_steps in (slice(-1, None), slice(None)):
        model.set_grad_checkpointing(False)
        out_a, g_a, x_a = _grads_with_input(model, x, 20, loss_steps)
        for segment in (1, 3, 7, 20, 25):
            model.set_grad_checkpointing(True, segment_steps=segment)
            out_b, g_b, x_b = _grads_with_input(model, x, 20, loss_steps)
            torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
            assert g_a.keys() == g_b.keys()
            for n in g_a:
                torch.testing.assert_close(g_b[n], g_a[n], rtol=1e-9, atol=1e-12, msg=f"{n}, segments of {segment}")
            torch.testing.assert_close(x_b, x_a, rtol=1e-9, atol=1e-12)
    with torch.no_grad():  # no graph, nothing to checkpoint
        torch.testing.assert_close(model(x, times=20).logits, out_a)


def test_segment_checkpointing_with_videos_standard_unroll_and_the_naive_schedule():
    """A video's frames get their gradients through the segments too; the standard unroll and the
    naive schedule checkpoint the same way."""
    x = torch.randn(2, 14, 3, 32, 32, dtype=torch.float64)
    for kw in ({}, {"unroll": "standard"}, {"fast": False}):
        model = _tiny("rgc_intermediate", **kw).double()
        out_a, g_a, x_a = _grads_with_input(model, x, 14, slice(None))
        model.set_grad_checkpointing(True, segment_steps=4)
        out_b, g_b, x_b = _grads_with_input(model, x, 14, slice(None))
        assert x_a is not None and x_a.abs().sum() > 0
        torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
        for n in g_a:
            torch.testing.assert_close(g_b[n], g_a[n], rtol=1e-9, atol=1e-12, msg=f"{kw}: {n}")
        torch.testing.assert_close(x_b, x_a, rtol=1e-9, atol=1e-12)


def test_segment_checkpointing_with_fused_gate_convolutions():
    """Fused convolutions concatenate their kernels once per unroll; the segments' first pass runs
    without gradients, so the kernels are concatenated again when the segment runs with them:
    every fused weight gets its gradient."""
    model = _tiny("rgc_shallow").double()
    for cell in (m for m in model.modules() if isinstance(m, RGCCell)):
        cell.fuse_convs = True
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _, g_a, _ = _grads_with_input(model, x, 10)
    model.set_grad_checkpointing(True, segment_steps=3)
    _, g_b, _ = _grads_with_input(model, x, 10)
    assert g_a.keys() == g_b.keys() and any(".cell_tau." in n for n in g_a)
    for n in g_a:
        torch.testing.assert_close(g_b[n], g_a[n], rtol=1e-9, atol=1e-12, msg=n)


def test_segment_checkpointing_keeps_less_than_per_layer_checkpointing():
    """What segments are for: at T=26 the peak of a train step is lower than with the per-layer
    checkpoints alone, which keep every step's states."""
    model = _tiny("rgc_shallow")
    x = torch.randn(8, 3, 32, 32)
    peaks = {}
    for segment in (None, 6):
        model.set_grad_checkpointing(True, segment_steps=segment)
        _train_grads(model, x, times=26)  # warm-up
        peaks[segment] = peak_memory_bytes(lambda: _train_grads(model, x, times=26))
    assert peaks[6] < 0.8 * peaks[None], peaks


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_segment_steps_must_be_a_positive_integer(bad):
    model = _tiny("rgc_shallow")
    with pytest.raises(ValueError, match="segment_steps: must be a positive integer"):
        model.set_grad_checkpointing(True, segment_steps=bad)


@pytest.mark.parametrize("name", ["rgc_shallow"])
def test_compile_steps_compiles_each_layer_once_and_equals_eager(name):
    """compile_steps compiles each layer's cell update once (batch-1 steps stay eager, so the batch
    size does not vary), not once per step; no graph breaks; the same logits and gradients as eager.
    (aot_eager: the tracing without inductor's code generation, which takes minutes here.)"""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    compiled, eager = _pair(name)
    eager = _tiny(name).to(memory_format=torch.channels_last)  # the same schedule and layout, eager
    counter = CompileCounterWithBackend("aot_eager")
    names = compiled.compile_steps(backend=counter)
    assert names == [n for n, layer in compiled.layers.items() if type(layer.cell).__name__ == "RGCCell"]
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out_c, g_c = _train_grads(compiled, x)
    frames = counter.frame_count
    # One graph per distinct layer shape (layers of the same shapes share one), none per step.
    assert 1 <= frames <= len(names)
    _train_grads(compiled, torch.randn_like(x))  # new images, same shapes: nothing recompiles
    assert counter.frame_count == frames
    out_e, g_e = _train_grads(eager, x)
    assert_same(out_c, out_e, "logits")
    for n in g_e:
        assert_same(g_c[n], g_e[n], n)
    compiled.compile_steps(False)
    assert all(layer._compiled_update is None for layer in compiled.layers.values())
