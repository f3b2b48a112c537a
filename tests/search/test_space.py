"""The search space file: validation that names the field, and every sample is a model create_model builds."""

import dataclasses
import textwrap

import optuna
import pytest
import torch
import yaml

import convrnn
from convrnn.cells.rgc import RGCConfig
from convrnn.search.space import DEFAULT_SPACE, SearchSpace, load_space, spec_from_params

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_default_space_has_every_rgc_option_and_the_paper_dimensions():
    space = load_space()
    # Every option of the RGC is a dimension of the shipped space (fixed or searched).
    assert set(space.cell) == {f.name for f in dataclasses.fields(RGCConfig)}
    searched = set(space.searched)
    for name in ("cell.tau_kernel", "cell.gate_separable", "cell.gate_nonlinearity", "cell.out_residual"):
        assert name in searched
    assert "feedback.entry" in searched and "feedback.conv5->conv3" in searched
    assert {"train.lr", "train.weight_decay", "train.clip"} <= searched
    assert space.cell["tau_multiplier"].kind == "tied"


def test_samples_build_train_and_rebuild_from_their_parameters():
    """Random draws from the default space: each builds, runs forward/backward, and rebuilds from its params."""
    torch.manual_seed(0)
    space = load_space()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    x = torch.randn(2, 3, 32, 32)
    entries = set()
    for _ in range(12):
        trial = study.ask()
        sample = space.sample(trial)
        spec = space.build_spec(sample, num_classes=10, image_size=32, width=0.125, times=6)
        model = convrnn.create_model(spec)
        out = model(x, times=6)
        out.logits[-1].sum().backward()
        assert torch.isfinite(out.logits).all()
        # Every RGC layer got the drawn cell; feedback is exactly the drawn edges.
        tau = sample.cell["tau_offset"]
        assert all(layer.cell.tau_offset == tau for layer in spec.layers if isinstance(layer.cell, RGCConfig))
        assert all(layer.cell.tau_multiplier == -tau for layer in spec.layers if isinstance(layer.cell, RGCConfig))
        drawn = {(e.source, e.target) for e in sample.edges}
        assert {(e.source, e.target) for e in spec.edges if e.kind == "feedback"} == drawn
        entries |= {e.entry for e in spec.edges if e.kind == "feedback"}
        # Clipping: at most one of norm / value.
        assert sample.train.get("clip_norm") is None or sample.train.get("clip_value") is None
        study.tell(trial, 0.0)
        rebuilt = spec_from_params(space, study.trials[-1].params, num_classes=10, image_size=32, width=0.125, times=6)
        assert rebuilt == spec
    assert len(entries) >= 2  # the entry dimension is really drawn


def test_cell_channels_scale_with_width_and_null_is_the_layer_depth(tmp_path):
    space = SearchSpace.load(write(tmp_path, "cell:\n  cell_channels: [64, null]\n"))
    trial = optuna.trial.FixedTrial({"cell.cell_channels": 64})
    spec = space.build_spec(space.sample(trial), num_classes=10, image_size=32, width=0.25)
    assert [layer.cell.cell_channels for layer in spec.layers if isinstance(layer.cell, RGCConfig)] == [16, 16, 16]
    trial = optuna.trial.FixedTrial({"cell.cell_channels": None})
    model = convrnn.create_model(space.build_spec(space.sample(trial), num_classes=10, image_size=32, width=0.25))
    assert model.spec.layer("conv5").cell.cell_channels is None


def test_rejected_combinations_map_to_a_valid_architecture(tmp_path):
    space = SearchSpace.load(
        write(
            tmp_path,
            """
            cell:
              gate_kernel: [0, 3]
              input_to_cell: false
              cell_residual: false
            feedback:
              entry: cell
              edges: [conv5->conv3, conv4->conv2]
            """,
        )
    )
    edges = {"feedback.conv5->conv3": True, "feedback.conv4->conv2": True}
    spec = space.build_spec(
        space.sample(optuna.trial.FixedTrial({"cell.gate_kernel": 3, **edges})), num_classes=10, image_size=32
    )
    assert spec.layer("conv3").cell.input_to_cell  # a cell needs an input
    entry = {(e.source, e.target): e.entry for e in spec.edges if e.kind == "feedback"}
    assert entry == {("conv5", "conv3"): "cell", ("conv4", "conv2"): "input"}  # conv2 takes no feedback path
    spec = space.build_spec(
        space.sample(optuna.trial.FixedTrial({"cell.gate_kernel": 0, **edges})), num_classes=10, image_size=32
    )
    assert {e.entry for e in spec.edges if e.kind == "feedback" and e.target == "conv3"} == {"out"}  # no cell now
    convrnn.create_model(spec)


def test_base_feedback_is_replaced_by_the_space(tmp_path):
    space = SearchSpace.load(write(tmp_path, "base: rgc_intermediate\nfeedback:\n  edges: [conv10->conv5]\n"))
    spec = space.build_spec(
        space.sample(optuna.trial.FixedTrial({"feedback.conv10->conv5": True})),
        num_classes=10,
        image_size=64,
        width=0.125,
    )
    assert [(e.source, e.target) for e in spec.edges if e.kind == "feedback"] == [("conv10", "conv5")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cell:\n  tau_kernal: 3\n", "space.yaml: cell.tau_kernal: unknown RGC option"),
        (
            "cell:\n  tau_nonlinearity: [sigmoid, sigmod]\n",
            "space.yaml: cell.tau_nonlinearity[1]: unknown activation 'sigmod'",
        ),
        ("cell:\n  tau_kernel: {low: 3, high: 1}\n", "space.yaml: cell.tau_kernel: low (3) must be below high (1)"),
        ("cell:\n  tau_kernel: {low: 1.5, high: 4}\n", "space.yaml: cell.tau_kernel.low: expected an integer"),
        ("cell:\n  gate_kernel: [-1, 3]\n", "space.yaml: cell.gate_kernel[0]: must be >= 0"),
        ("cell:\n  layer_norm: {low: 0, high: 1}\n", "space.yaml: cell.layer_norm: a range needs a number option"),
        (
            "cell:\n  tau_offset: {tied: gate_offst}\n",
            "space.yaml: cell.tau_offset.tied: 'gate_offst' is not an option",
        ),
        ("cell:\n  tau_kernel: {low: 1, hgh: 4}\n", "space.yaml: cell.tau_kernel.hgh: unknown field for a range"),
        ("base: rgc_tiny\n", "space.yaml: base: unknown zoo model 'rgc_tiny'"),
        (
            "base: ff_shallow\nfeedback: {edges: [conv5->conv3]}\n",
            "space.yaml: base: 'ff_shallow' has no RGC layer to search",
        ),
        ("feedback:\n  edges: [conv3->conv5]\n", "space.yaml: feedback.edges[0]: conv3->conv5 runs forward"),
        ("feedback:\n  edges: [conv5->conv3, conv9->conv3]\n", "space.yaml: feedback.edges[1]: unknown layer 'conv9'"),
        ("feedback:\n  entry: [input, cel]\n", "space.yaml: feedback.entry[1]: 'cel' is not one of"),
        ("train:\n  lr: {low: 0, high: 0.1, log: true}\n", "space.yaml: train.lr.low: must be > 0"),
        ("train:\n  batch_size: 32\n", "space.yaml: train.batch_size: not a searchable training setting"),
        (
            "train:\n  clip_norm: 1.0\n  clip_value: 0.5\n",
            "space.yaml: train.clip: clip_norm and clip_value are both set",
        ),
        ("train:\n  clip: [norm, value]\n", "space.yaml: train.clip_value: missing"),
        ("celll:\n  tau_kernel: 3\n", "space.yaml: celll: unknown section"),
        ("cell: [1, 2]\n", "space.yaml: cell: expected a mapping"),
        ("cell:\n  tau_kernel: [3, 3]\n", "space.yaml: cell.tau_kernel: repeated choices"),
    ],
)
def test_malformed_space_names_the_field(tmp_path, text, message):
    with pytest.raises(convrnn.SpecError) as e:
        SearchSpace.load(write(tmp_path, text))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_and_unparsable_files(tmp_path):
    with pytest.raises(convrnn.SpecError, match=r"--space: cannot read '.*missing.yaml'"):
        SearchSpace.load(tmp_path / "missing.yaml")
    with pytest.raises(convrnn.SpecError, match=r"^bad.yaml: not valid YAML"):
        SearchSpace.load(write(tmp_path, "cell: [1, 2\n", "bad.yaml"))
    with pytest.raises(convrnn.SpecError, match=r"^bad.json: not valid JSON"):
        SearchSpace.load(write(tmp_path, "{cell: 1}", "bad.json"))


def test_json_space_equals_yaml_space(tmp_path):
    import json

    data = yaml.safe_load(DEFAULT_SPACE.read_text())
    path = tmp_path / "space.json"
    path.write_text(json.dumps(data))
    assert SearchSpace.load(path).searched == load_space().searched


def test_a_spec_file_base_with_only_a_train_section_tunes_a_fixed_model(tmp_path):
    """Any model (here the feedforward net) can have its optimiser tuned; its spec is built as it is."""
    spec = convrnn.model_spec("ff_shallow", num_classes=10, image_size=48, width=0.5)
    spec.save(tmp_path / "ff.yaml")
    path = write(tmp_path, f"base: {tmp_path / 'ff.yaml'}\ntrain:\n  lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}\n")
    space = load_space(path)
    assert space.searched == ["train.lr"]
    sample = space.sample(optuna.trial.FixedTrial({"train.lr": 1e-3}))
    assert sample.train == {"lr": 1e-3} and not sample.cell and not sample.edges
    built = space.build_spec(sample, num_classes=10, image_size=48, times=9)
    assert built.layers == spec.layers and built.times == 9
    with pytest.raises(ValueError, match=r"base: .*ff.yaml.* is for 48 px and 10 classes; the data need 32 px"):
        space.build_spec(sample, num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="width: base"):
        space.build_spec(sample, num_classes=10, image_size=48, width=0.25)


def test_a_base_without_rgc_layers_cannot_search_cells(tmp_path):
    path = write(tmp_path, "base: ff_shallow\ncell:\n  tau_kernel: {low: 1, high: 3}\n")
    with pytest.raises(ValueError, match=r"space.yaml: base: 'ff_shallow' has no RGC layer to search"):
        load_space(path)
    path = write(tmp_path, "base: missing.yaml\n")
    with pytest.raises(ValueError, match=r"space.yaml: base: cannot read spec file 'missing.yaml'"):
        load_space(path)
