"""The zoo: every registered model builds, runs forward and backward, and has the reference's size."""

import pytest
import torch

import convrnn

# Trainable parameters of the full-size models, counted by the reference implementation itself
# (rgc_shallow, rgc_intermediate, timedecay_shallow) or derived from its variable shapes (the rest).
FULL_SIZE_PARAMS = {
    "ff_shallow": 4_197_736,
    "timedecay_shallow": 4_197_739,
    "simplernn_shallow": 6_272_872,
    "ugrnn_shallow": 18_355_560,
    "lstm_shallow": 21_126_248,
    "rgc_shallow": 23_956_840,
    "gru_shallow": 25_434_472,
    "intersectionrnn_shallow": 32_513_384,
    "rgc_intermediate": 15_445_800,
    "timedecay_intermediate": 16_403_439,
    "simplernn_intermediate": 33_512_936,
    "ugrnn_intermediate": 50_617_832,
    "gru_intermediate": 67_725_032,
    "lstm_intermediate": 84_832_232,
    "intersectionrnn_intermediate": 84_832_232,
    # Released variants: the same networks; tmaxconf adds the decoder's trainable temperature.
    "rgc_intermediate_dthresh": 15_445_800,
    "rgc_intermediate_tmaxconf": 15_445_801,
    "rgc_intermediate_t22_tmaxconf": 15_445_801,
    "ugrnn_intermediate_t30": 50_617_832,
    "ugrnn_intermediate_t30_dthresh": 50_617_832,
    "ugrnn_intermediate_t30_tmaxconf": 50_617_833,
}


def test_registry_lists_every_reference_model():
    cells = ("timedecay", "simplernn", "gru", "lstm", "ugrnn", "intersectionrnn")
    expected = {"ff_shallow", "rgc_shallow", "rgc_intermediate"}
    expected |= {f"{c}_{d}" for c in cells for d in ("shallow", "intermediate")}
    expected |= {"rgc_intermediate_dthresh", "rgc_intermediate_tmaxconf", "rgc_intermediate_t22_tmaxconf"}
    expected |= {"ugrnn_intermediate_t30", "ugrnn_intermediate_t30_dthresh", "ugrnn_intermediate_t30_tmaxconf"}
    assert set(convrnn.list_models()) == expected
    # The 20 released checkpoints: every model but the feedforward control.
    assert sum(convrnn.create_model(n, width=0.0625, image_size=32).pretrained_cfg is not None for n in expected) == 20
    assert convrnn.list_models("rgc_*") == [
        "rgc_intermediate",
        "rgc_intermediate_dthresh",
        "rgc_intermediate_t22_tmaxconf",
        "rgc_intermediate_tmaxconf",
        "rgc_shallow",
    ]
    assert convrnn.list_models("nothing*") == []


@pytest.mark.parametrize("name", convrnn.list_models())
def test_forward_backward_tiny(name):
    torch.manual_seed(0)
    model = convrnn.create_model(name, num_classes=3, image_size=32, width=0.0625)
    x = torch.randn(2, 3, 32, 32)
    out = model(x, times=12)
    assert out.logits.shape == (12, 2, 3)
    assert out.decoded.shape == (2, 3)
    assert torch.isfinite(out.logits).all()
    out.logits[-1].sum().backward()
    # A decoder's temperature only chooses a step (argmax): no gradient reaches it through that.
    grads = [p.grad for n, p in model.named_parameters() if not n.startswith("decoder.")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(FULL_SIZE_PARAMS))
def test_full_size_parameter_counts(name):
    model = convrnn.create_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == FULL_SIZE_PARAMS[name]


def test_full_size_geometry_matches_reference():
    shallow = convrnn.create_model("rgc_shallow", num_classes=1000)
    assert [shallow.plans[f"conv{i}"].output_shape[1] for i in range(1, 6)] == [56, 28, 14, 7, 4]
    assert shallow.layers["imnetds"].pre[0].conv.weight.shape == (1000, 512, 2, 2)
    inter = convrnn.create_model("rgc_intermediate")
    assert [inter.plans[f"conv{i}"].output_shape[1] for i in range(1, 11)] == [56, 56, 56, 28, 28, 14, 7, 7, 7, 4]
    # The median cell's 7x7 depthwise kernels keep their size at 224 px ...
    assert inter.layers["conv10"].cell.out_tau.depthwise.weight.shape[-2:] == (7, 7)
    # ... and are clamped to the map where the map is smaller.
    small = convrnn.create_model("rgc_intermediate", image_size=64, width=0.125)
    assert small.layers["conv10"].cell.out_tau.depthwise.weight.shape[-2:] == (2, 2)


def test_small_images_clamp_the_shallow_readout():
    model = convrnn.create_model("gru_shallow", num_classes=4, image_size=32, width=0.125)
    assert model.layers["imnetds"].pre[0].conv.weight.shape[-2:] == (1, 1)
    model = convrnn.create_model("gru_shallow", num_classes=4, image_size=65, width=0.125)
    assert model.layers["imnetds"].pre[0].conv.weight.shape[-2:] == (2, 2)


def test_width_expresses_the_reduced_channel_plans():
    model = convrnn.create_model("lstm_shallow", num_classes=10, image_size=160, width=1 / 8)
    assert model.layers["conv3"].cell.out_channels == 16
    assert model.layers["conv4"].cell.w_f.shape == (32, 10, 10)  # peepholes follow the map size
    model = convrnn.create_model("rgc_intermediate", num_classes=10, image_size=194, width=1 / 8)
    assert model.layers["conv6"].cell.cell_channels == 8
    assert model.layers["conv6"].cell.feedback["out"].weight.shape == (32, 96, 1, 1)  # conv7 + conv9


def test_create_model_errors_and_metadata():
    with pytest.raises(KeyError, match="unknown model 'rgc_deep'"):
        convrnn.create_model("rgc_deep")
    with pytest.raises(TypeError, match="unexpected keyword argument 'depth'"):
        convrnn.create_model("rgc_shallow", depth=3)
    spec = convrnn.model_spec("rgc_shallow", width=0.125)
    with pytest.raises(TypeError, match="apply to named models only"):
        convrnn.create_model(spec, width=0.5)
    model = convrnn.create_model("rgc_intermediate", width=0.125)
    assert (model.pretrained_cfg["top1"], model.pretrained_cfg["top5"]) == (73.0, 91.16)
    assert model.pretrained_cfg["url"].endswith("/rgc_intermediate/")
    assert convrnn.create_model("ff_shallow", width=0.125).pretrained_cfg is None


def test_released_variants_unroll_and_decode_as_released():
    m = convrnn.create_model("ugrnn_intermediate_t30_dthresh", num_classes=3, image_size=32, width=0.0625)
    assert (m.spec.times, m.spec.presentation.kind, m.spec.readout.decoder) == (30, "constant", "threshold")
    assert m.pretrained_cfg["decoder"] == "threshold" and m.pretrained_cfg["presentation"] == "constant"
    m = convrnn.create_model("rgc_intermediate_tmaxconf", num_classes=3, image_size=32, width=0.0625)
    assert (m.spec.times, m.spec.presentation.kind, m.spec.readout.decoder) == (17, "default", "max_conf")
    assert [n for n, _ in m.decoder.named_parameters()] == ["beta"]


def test_weights_round_trip_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    a = convrnn.create_model("rgc_intermediate", num_classes=3, image_size=32, width=0.125)
    state = {k: v.contiguous() for k, v in a.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    x = torch.randn(1, 3, 32, 32)
    ref = a(x).logits
    for f in ("w.safetensors", "w.pt"):
        b = convrnn.create_model("rgc_intermediate", num_classes=3, image_size=32, width=0.125, weights=tmp_path / f)
        assert torch.equal(b(x).logits, ref)
    with pytest.raises(FileNotFoundError, match="no such file"):
        convrnn.create_model("rgc_shallow", weights=tmp_path / "missing.safetensors")
    other = convrnn.create_model("gru_shallow", num_classes=3, image_size=32, width=0.125)
    torch.save(other.state_dict(), tmp_path / "gru.pt")
    with pytest.raises(ValueError, match=r"missing .*unexpected"):
        convrnn.create_model("rgc_shallow", num_classes=3, image_size=32, width=0.125, weights=tmp_path / "gru.pt")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 1}, "image_size: must be an integer >= 32"),
        ({"width": 0}, "width: must be a number > 0"),
        ({"num_classes": 0}, "num_classes: must be an integer >= 1"),
        ({"times": True}, "times: must be an integer >= 1"),
    ],
)
def test_create_model_names_an_impossible_override(overrides, message):
    with pytest.raises(ValueError, match=message):
        convrnn.create_model("rgc_shallow", **overrides)
