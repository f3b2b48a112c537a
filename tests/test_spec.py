"""Architecture as data: round-trips and validation errors that name the field."""

import copy

import pytest

import convrnn
from convrnn.cells import IntersectionRNNConfig, RGCConfig
from convrnn.errors import SpecError
from convrnn.spec import Conv, EdgeSpec, GlobalAvgPool, LayerSpec, MaxPool, ModelSpec


@pytest.mark.parametrize("name", convrnn.list_models())
def test_zoo_specs_round_trip_yaml_and_json(name, tmp_path):
    spec = convrnn.model_spec(name, num_classes=10, image_size=64, width=0.25)
    assert ModelSpec.from_yaml(spec.to_yaml()) == spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    path = tmp_path / "spec.yaml"
    spec.save(path)
    assert ModelSpec.load(path) == spec
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left behind


def test_loaded_spec_builds_the_same_model():
    spec = convrnn.model_spec("rgc_intermediate", num_classes=5, image_size=32, width=0.125)
    a = convrnn.create_model(ModelSpec.from_yaml(spec.to_yaml()))
    b = convrnn.create_model(spec)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def _small() -> ModelSpec:
    return convrnn.model_spec("rgc_intermediate", num_classes=5, image_size=32, width=0.125)


def _expect(spec: ModelSpec, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        convrnn.create_model(spec)


def test_unknown_layer_in_edge_names_the_field():
    spec = _small()
    spec.edges.append(EdgeSpec("conv11", "conv5", kind="feedback", entry="out"))
    _expect(spec, r"^edges\[\d+\]\.source: unknown layer 'conv11'")


def test_duplicate_edge():
    spec = _small()
    spec.edges.append(copy.deepcopy(spec.edges[-1]))
    _expect(spec, r"duplicate edge conv10->conv9")


def test_feedforward_cycle():
    layers = [LayerSpec(n, [Conv(4)]) for n in ("a", "b", "c")]
    edges = [EdgeSpec("c", "b"), EdgeSpec("b", "c")]
    _expect(ModelSpec("cyc", layers, edges, image_size=8, readout=convrnn.ReadoutSpec("c")), r"feedforward cycle")


def test_second_feedforward_input_and_missing_one():
    spec = _small()
    spec.edges.append(EdgeSpec("conv2", "conv4"))
    _expect(spec, r"'conv4' already has feedforward input 'conv3'")
    spec = _small()
    spec.edges = [e for e in spec.edges if e.target != "conv6" or e.kind != "feedforward"]
    _expect(spec, r"'conv6' has no feedforward input edge")


def test_edge_direction_must_match_kind():
    spec = _small()
    spec.edges.append(EdgeSpec("conv2", "conv5", kind="feedback"))
    _expect(spec, r"edges\[\d+\]\.kind: conv2->conv5 runs forward")
    spec = _small()
    spec.edges.append(EdgeSpec("conv9", "conv4", kind="skip"))
    _expect(spec, r"edges\[\d+\]\.kind: conv9->conv4 runs backward")


def test_entry_point_needs_a_cell_that_takes_feedback():
    spec = convrnn.model_spec("gru_shallow", num_classes=5, image_size=32, width=0.125)
    spec.edges.append(EdgeSpec("conv5", "conv3", kind="feedback", entry="out"))
    _expect(spec, r"edges\[\d+\]\.entry: 'out' needs a cell that takes feedback, but 'conv3' has cell 'gru'")


def test_cell_whose_channels_cannot_work():
    spec = convrnn.model_spec("intersectionrnn_shallow", num_classes=5, image_size=32, width=0.125)
    spec.layers[2].cell = IntersectionRNNConfig(out_channels=7)
    _expect(spec, r"layers\[2\]\.cell\.out_channels: an IntersectionRNN .* \(7\) must equal the input's \(32\)")


def test_bad_cell_and_op_fields():
    spec = _small()
    spec.layers[4].cell = RGCConfig(input_to_cell=False)
    _expect(spec, r"layers\[4\]\.cell\.input_to_cell")
    spec = _small()
    spec.layers[4].cell = RGCConfig(gate_nonlinearity="swish")
    _expect(spec, r"layers\[4\]\.cell\.gate_nonlinearity: unknown activation 'swish'")
    spec = _small()
    spec.layers[0].pre = [Conv(8, activation="gelu")]
    _expect(spec, r"layers\[0\]\.pre\[0\]: unknown activation 'gelu'")


def test_readout_and_area_names_are_checked():
    spec = _small()
    spec.readout = convrnn.ReadoutSpec("fc8")
    _expect(spec, r"readout\.layer: unknown layer 'fc8'")
    spec = _small()
    spec.areas["V1"] = ["conv0"]
    _expect(spec, r"areas\.V1\[0\]: unknown layer 'conv0'")


def test_readout_must_output_logits():
    spec = _small()
    spec.layers[-1].pre = spec.layers[-1].pre[:1]  # global average pool, no FC: still logits-shaped
    convrnn.create_model(spec)
    spec = convrnn.model_spec("gru_shallow", num_classes=5, image_size=32, width=0.125)
    spec.layers[-1].post = []
    _expect(spec, r"readout\.layer: 'imnetds' outputs shape \(5, 1, 1\)")


def test_valid_conv_on_too_small_map_without_clamping():
    spec = convrnn.model_spec("gru_shallow", num_classes=5, image_size=32, width=0.125)
    spec.layers[-1].pre[0].clamp_kernel = False
    _expect(spec, r"layers\[5\]\.pre\[0\]: 2x2 VALID conv on a 1x1 map")


def test_from_dict_errors_name_the_field():
    data = _small().to_dict()
    bad = copy.deepcopy(data)
    bad["layers"][3]["cell"]["tau_kernal"] = 3
    with pytest.raises(SpecError, match=r"spec\.layers\[3\]\.cell\.tau_kernal: unknown field for RGCConfig"):
        ModelSpec.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["layers"][0]["pre"][0]["op"] = "conv3d"
    with pytest.raises(SpecError, match=r"spec\.layers\[0\]\.pre\[0\]\.op: unknown op 'conv3d'"):
        ModelSpec.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["edges"][0]["kind"] = "lateral"
    with pytest.raises(SpecError, match=r"spec\.edges\[0\]\.kind: 'lateral' is not one of"):
        ModelSpec.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["layers"][1]["pre"][0]["out_channels"] = "many"
    with pytest.raises(SpecError, match=r"spec\.layers\[1\]\.pre\[0\]\.out_channels: expected an integer"):
        ModelSpec.from_dict(bad)
    bad = copy.deepcopy(data)
    del bad["layers"]
    with pytest.raises(SpecError, match=r"spec\.layers: missing required field"):
        ModelSpec.from_dict(bad)


def test_user_graph_with_skip_and_feedback_builds_and_runs():
    """A hand-written graph: a skip concatenated into a GRU layer and feedback into an RGC's cell."""
    import torch

    from convrnn.cells import GRUConfig

    layers = [
        LayerSpec("v1", [Conv(4, 3, 2, activation="elu")], post=[MaxPool()]),
        LayerSpec("v2", [Conv(6)], RGCConfig(cell_channels=3)),
        LayerSpec("v4", [Conv(6)], GRUConfig()),
        LayerSpec("it", [Conv(5, 2, padding="valid", clamp_kernel=True)], post=[GlobalAvgPool()]),
    ]
    edges = [
        EdgeSpec("v1", "v2"),
        EdgeSpec("v2", "v4"),
        EdgeSpec("v4", "it"),
        EdgeSpec("v1", "v4", kind="skip"),
        EdgeSpec("v4", "v2", kind="feedback", entry="cell"),
    ]
    spec = ModelSpec("toy", layers, edges, readout=convrnn.ReadoutSpec("it"), image_size=16, times=6)
    model = convrnn.create_model(ModelSpec.from_json(spec.to_json()))
    out = model(torch.randn(2, 3, 16, 16))
    assert out.logits.shape[:2] == (6, 2)
    assert model.first_stimulus_steps() == {"v1": 0, "v2": 1, "v4": 1, "it": 2}
    # Feedback from a layer whose output has no map cannot be resized into one.
    spec.edges.append(EdgeSpec("it", "v1", kind="feedback"))
    _expect(spec, r"edges: it->v1 needs spatial maps on both ends")
