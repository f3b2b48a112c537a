"""A written plugin folder imports, registers its model with Brain-Score, and serves the exported model."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

import convrnn

pytest.importorskip("brainscore_vision", reason="brainscore-vision is not installed here (see `make test-brainscore`)")

import brainscore_vision
from brainscore_core.metadata.contract import validate
from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
from brainscore_vision.model_interface import BrainModel

from convrnn.brainscore import ConvRNNBrainModel, write_plugin


def import_plugin_folder(folder: Path, package: str):
    """Import ``folder`` as the package ``package`` (as Brain-Score imports brainscore_vision.models.<name>)."""
    spec = importlib.util.spec_from_file_location(
        package, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    spec.loader.exec_module(module)
    return module


def test_plugin_registers_a_working_model(
    make_model: Callable[..., convrnn.ConvRNN], photos: list[Path], tmp_path: Path
) -> None:
    exported = make_model(seed=5)
    labels = [f"digit{i}" for i in range(10)]
    folder = write_plugin(
        exported, tmp_path, identifier="convrnn-tiny-rgc", visual_degrees=6, class_labels=labels, offset_ms=0.0
    )
    package = "convrnn_test_plugin_" + folder.name
    try:
        import_plugin_folder(folder, package)
        assert "convrnn-tiny-rgc" in brainscore_vision.model_registry
        brain = brainscore_vision.model_registry["convrnn-tiny-rgc"]()
        model_py = sys.modules[f"{package}.model"]
        assert model_py.get_model_list() == ["convrnn-tiny-rgc"]
        assert model_py.get_layers("convrnn-tiny-rgc") == ["conv3", "conv4", "conv5"]
        assert "Nayebi" in model_py.get_bibtex("convrnn-tiny-rgc")
        with pytest.raises(ValueError, match="this plugin holds 'convrnn-tiny-rgc', not 'alexnet'"):
            model_py.get_model("alexnet")
    finally:
        brainscore_vision.model_registry.pop("convrnn-tiny-rgc", None)
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]

    assert isinstance(brain, BrainModel) and isinstance(brain, ConvRNNBrainModel)
    assert brain.identifier == "convrnn-tiny-rgc" and brain.visual_degrees() == 6
    assert brain.class_labels == labels
    validate(yaml.safe_load((folder / "metadata.yaml").read_text()), domain="vision")

    # The registered model answers as the exported one does.
    ids = [p.stem for p in photos]
    stimuli = StimulusSet({"stimulus_id": ids, "filename": [p.name for p in photos]})
    stimuli.stimulus_paths = dict(zip(ids, photos))
    direct = ConvRNNBrainModel(exported, "direct")
    for m in (brain, direct):
        m.start_recording("IT", [(70, 80), (80, 90), (100, 200)])
    np.testing.assert_array_equal(brain.look_at(stimuli).values, direct.look_at(stimuli).values)
    brain.start_task("label", ["digit1", "digit4"])
    assert set(brain.look_at(stimuli).values[0]) <= {"digit1", "digit4"}
