"""ConvRNNBrainModel against the real brainscore_vision package, on scikit-image's photographs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import convrnn

pytest.importorskip("brainscore_vision", reason="brainscore-vision is not installed here (see `make test-brainscore`)")

from brainscore_core.supported_data_standards.brainio.assemblies import BehavioralAssembly, NeuroidAssembly
from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
from brainscore_vision.model_helpers.brain_transformation.temporal import assembly_time_align, time_align
from brainscore_vision.model_helpers.generic_plugin_tests import ProbeModel
from brainscore_vision.model_interface import BrainModel

from convrnn.brainscore import ConvRNNBrainModel, TimeBinError, time_bin_weights

BINS = [(70, 80), (80, 90), (100, 200)]


def stimulus_set(paths: list[Path], labels: list[str] | None = None) -> StimulusSet:
    ids = [f"id-{p.stem}" for p in paths]
    columns = {"stimulus_id": ids, "filename": [p.name for p in paths], "object_name": [p.stem for p in paths]}
    if labels is not None:
        columns["image_label"] = labels
    stimuli = StimulusSet(columns)
    stimuli.stimulus_paths = dict(zip(ids, paths))
    stimuli.identifier = "convrnn-test.skimage-photos"
    return stimuli


def expected_features(brain: ConvRNNBrainModel, paths: list[Path], layers: list[str]) -> np.ndarray:
    """(N, units, 26): the model's own features of these layers at every step of the neural presentation."""
    x = brain.images(paths)
    with torch.no_grad():
        feats = brain.model.features(x, areas=layers, times=26, presentation="neural")
    return np.stack([torch.cat([feats[a][t].flatten(1) for a in layers], 1).numpy() for t in range(26)], axis=2)


def test_recording_it_in_time_bins(model: convrnn.ConvRNN, photos: list[Path]) -> None:
    brain = ConvRNNBrainModel(model, "tiny-rgc")
    assert isinstance(brain, BrainModel)
    assert brain.identifier == "tiny-rgc" and brain.visual_degrees() == 8
    stimuli = stimulus_set(photos)
    brain.start_recording("IT", BINS)
    rec = brain.look_at(stimuli, number_of_trials=1)

    assert isinstance(rec, NeuroidAssembly)
    rec.validate()
    assert rec.dims == ("presentation", "neuroid", "time_bin")
    full = expected_features(brain, photos, ["conv4", "conv5"])
    assert rec.shape == (len(photos), full.shape[1], 3)
    assert list(rec["stimulus_id"].values) == list(stimuli["stimulus_id"])
    for column in ("filename", "object_name"):  # every StimulusSet column is a presentation coordinate
        assert list(rec[column].values) == list(stimuli[column])
    assert list(rec["time_bin_start"].values) == [70, 80, 100]
    assert list(rec["time_bin_end"].values) == [80, 90, 200]
    assert set(rec["region"].values) == {"IT"}
    assert set(rec["layer"].values) == {"conv4", "conv5"}
    assert len(set(rec["neuroid_id"].values)) == rec.sizes["neuroid"]

    # The values are the model's own features at the mapped steps: 7, 8 and the mean of 10-19.
    got = rec.transpose("presentation", "neuroid", "time_bin").values
    np.testing.assert_allclose(got[..., 0], full[..., 7], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[..., 1], full[..., 8], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[..., 2], full[..., 10:20].mean(axis=2), rtol=1e-5, atol=1e-6)
    assert got[..., 0].std(axis=0).max() > 0  # the stimulus reaches IT by 70 ms: images differ

    # Brain-Score's own temporal alignment accepts the assembly as it is (its time_bin index layout).
    same = assembly_time_align(rec, BINS)
    np.testing.assert_allclose(same.transpose("presentation", "neuroid", "time_bin").values, got, rtol=1e-6)


def test_bin_weights_agree_with_brainscore_portion_rule() -> None:
    source = [(10 * t, 10 * t + 10) for t in range(26)]
    target = [(70, 80), (75, 85), (100, 200), (72, 95), (0, 260)]
    theirs = time_align(source, target, mode="portion")
    theirs = theirs / theirs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(time_bin_weights(target, times=26), theirs, rtol=1e-12)


def test_list_of_files_and_single_bin(model: convrnn.ConvRNN, photos: list[Path]) -> None:
    brain = ConvRNNBrainModel(model, visual_degrees=10)
    assert brain.identifier == "rgc_shallow" and brain.visual_degrees() == 10
    brain.start_recording(recording_target="V4", time_bins=np.array([[100, 200]]))  # arrays work too
    rec = brain.look_at([str(p) for p in photos])
    assert rec.sizes["time_bin"] == 1 and set(rec["layer"].values) == {"conv3"}
    assert list(rec["stimulus_id"].values) == [str(p) for p in photos]
    full = expected_features(brain, photos, ["conv3"])
    np.testing.assert_allclose(rec.values[..., 0], full[..., 10:20].mean(axis=2), rtol=1e-5, atol=1e-6)


def test_bins_after_260_ms_unroll_further(model: convrnn.ConvRNN, photos: list[Path]) -> None:
    # The blank after the image goes on: bins past the neural presentation's 26 steps are answered.
    brain = ConvRNNBrainModel(model)
    brain.start_recording("IT", [(70, 80), (250, 270), (285, 290)])
    rec = brain.look_at(stimulus_set(photos)).transpose("presentation", "neuroid", "time_bin").values
    x = brain.images(photos)
    with torch.no_grad():
        feats = brain.model.features(x, areas=["conv4", "conv5"], times=29, presentation="neural")
    full = np.stack([torch.cat([feats[a][t].flatten(1) for a in ("conv4", "conv5")], 1).numpy() for t in range(29)], 2)
    np.testing.assert_allclose(rec[..., 0], full[..., 7], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec[..., 1], full[..., 25:27].mean(axis=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec[..., 2], full[..., 28], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        full[..., :26], expected_features(brain, photos, ["conv4", "conv5"]), rtol=1e-5, atol=1e-6
    )


def test_region_map_and_crop_preprocessing(model: convrnn.ConvRNN, photos: list[Path]) -> None:
    brain = ConvRNNBrainModel(model, region_layer_map={"V1": "conv1", "IT": ["cIT-aIT"]}, preprocess="crop")
    brain.start_recording("V1", [(0, 10), (30, 30)])
    rec = brain.look_at(stimulus_set(photos))
    full = expected_features(brain, photos, ["conv1"])
    np.testing.assert_allclose(rec.values[..., 0], full[..., 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.values[..., 1], full[..., 3], rtol=1e-5, atol=1e-6)
    # "crop" is the reference's evaluation transform, a different view of the same files.
    assert not torch.equal(brain.images(photos[:1]), ConvRNNBrainModel(model).images(photos[:1]))
    with pytest.raises(ValueError, match=r"recording_target: region 'V4' has no layers in 'rgc_shallow' \(mapped"):
        brain.start_recording("V4", BINS)


def test_bad_input(model: convrnn.ConvRNN, photos: list[Path]) -> None:
    brain = ConvRNNBrainModel(model)
    with pytest.raises(ValueError, match=r"look_at: call start_task\(...\) or start_recording\(...\) first"):
        brain.look_at(stimulus_set(photos))
    with pytest.raises(ValueError, match=r"recording_target: region 'V1' has no layers .*V4, pIT, cIT-aIT, IT"):
        brain.start_recording("V1", BINS)
    with pytest.raises(TimeBinError, match=r"time_bins\[1\] = \(250, 270\) ms: outside the unrolled window \[0, 260\]"):
        ConvRNNBrainModel(model, times=26).start_recording("IT", [(70, 80), (250, 270)])  # an explicit window
    with pytest.raises(TimeBinError, match=r"time_bins\[0\] = \(-10, 0\) ms: outside the unrolled window"):
        brain.start_recording("IT", [(-10, 0)])
    with pytest.raises(
        TimeBinError, match=r"time_bins: expected a non-empty list of \(start_ms, end_ms\) pairs, got 5"
    ):
        brain.start_recording("IT", 5)
    with pytest.raises(ValueError, match=r"region_layer_map\['IT'\]: unknown area 'conv7'"):
        ConvRNNBrainModel(model, region_layer_map={"IT": ["conv7"]})
    with pytest.raises(ValueError, match=r"behavior_layer: unknown area 'fc8'"):
        ConvRNNBrainModel(model, behavior_layer="fc8")
    with pytest.raises(ValueError, match=r"task: 'odd_one_out' is not supported"):
        brain.start_task("odd_one_out")
    brain.start_recording("IT", BINS)
    with pytest.raises(ValueError, match=r"stimuli: expected a StimulusSet or a list of image files, got int"):
        brain.look_at(3)
    missing = stimulus_set(photos)
    missing.stimulus_paths = {}
    with pytest.raises(ValueError, match=r"stimuli: no image file for stimulus_id 'id-astronaut'"):
        brain.look_at(missing)


def test_label_task(make_model: Callable[..., convrnn.ConvRNN], photos: list[Path]) -> None:
    names = [f"class{i}" for i in range(10)]
    small = make_model()
    brain = ConvRNNBrainModel(small, class_labels=names)
    stimuli = stimulus_set(photos)
    with torch.no_grad():
        logits = small(brain.images(photos)).decoded.numpy()
    brain.start_task(BrainModel.Task.label, ["class2", "class7"])
    out = brain.look_at(stimuli)
    assert isinstance(out, BehavioralAssembly) and out.dims == ("choice", "presentation")
    want = np.where(logits[:, 2] >= logits[:, 7], "class2", "class7")
    assert list(out.values[0]) == list(want)
    assert list(out["stimulus_id"].values) == list(stimuli["stimulus_id"])
    brain.start_task("label")  # every class
    assert list(brain.look_at(stimuli).values[0]) == [names[i] for i in logits.argmax(1)]
    with pytest.raises(ValueError, match=r"'imagenet' needs a 1000-class model, 'rgc_shallow' has 10 classes"):
        brain.start_task("label", "imagenet")
    with pytest.raises(ValueError, match=r"'dog' is not one of the model's class_labels"):
        brain.start_task("label", ["dog"])
    with pytest.raises(ValueError, match=r"has 10 classes and no class_labels naming them"):
        ConvRNNBrainModel(small).start_task("label", ["a", "b"])
    with pytest.raises(ValueError, match=r"class_labels: 3 labels for a model with 10 classes"):
        ConvRNNBrainModel(small, class_labels=["a", "b", "c"])


def test_label_task_imagenet(make_model: Callable[..., convrnn.ConvRNN], photos: list[Path]) -> None:
    from brainscore_vision.model_helpers.brain_transformation import behavior

    synsets = (Path(behavior.__file__).parent / "imagenet_classes.txt").read_text().splitlines()
    big = make_model(num_classes=1000)
    brain = ConvRNNBrainModel(big)
    stimuli = stimulus_set(photos)
    with torch.no_grad():
        logits = big(brain.images(photos)).decoded.numpy()
    brain.start_task("label", "imagenet")
    out = brain.look_at(stimuli)
    assert list(out.values[0]) == [synsets[i] for i in logits.argmax(1)]
    assert list(out["logit"].values) == list(logits.argmax(1))
    # Brain-Score's label groups: the mean probability over each group's ImageNet classes.
    brain.start_task("label", ["dog", "cat"])
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    dog = prob[:, behavior.LabelToImagenetIndices.dog_indices].mean(1)
    cat = prob[:, behavior.LabelToImagenetIndices.cat_indices].mean(1)
    assert list(brain.look_at(stimuli).values[0]) == list(np.where(dog >= cat, "dog", "cat"))
    with pytest.raises(ValueError, match=r"no ImageNet classes are known for label 'gryphon'"):
        brain.start_task("label", ["dog", "gryphon"])


def test_probabilities_task(model: convrnn.ConvRNN, photos_and_mirrors: list[Path], photos: list[Path]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    labels = [p.stem.removesuffix("_mirror") for p in photos_and_mirrors]
    fitting = stimulus_set(photos_and_mirrors, labels)
    brain = ConvRNNBrainModel(model)
    assert brain.behavior_layer == "conv5" and brain.behavior_step == model.spec.times - 1
    brain.start_task(BrainModel.Task.probabilities, fitting)
    test = stimulus_set(photos)
    prob = brain.look_at(test)
    assert isinstance(prob, BehavioralAssembly) and set(prob.dims) == {"presentation", "choice"}
    assert list(prob["choice"].values) == list(dict.fromkeys(labels))
    prob = prob.transpose("presentation", "choice").values
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-6)

    # The same readout by hand: conv5 at the last step of the model's own presentation, standardised,
    # multinomial logistic regression with C=1e-3 (Brain-Score's ProbabilitiesClassifier).
    def feats(paths: list[Path]) -> np.ndarray:
        with torch.no_grad():
            f = model.features(brain.images(paths), areas=["conv5"], times=[model.spec.times - 1])
        return f["conv5"][model.spec.times - 1].flatten(1).numpy()

    scaler = StandardScaler().fit(feats(photos_and_mirrors))
    clf = LogisticRegression(multi_class="multinomial", solver="newton-cg", C=1e-3)
    clf.fit(scaler.transform(feats(photos_and_mirrors)), [list(dict.fromkeys(labels)).index(s) for s in labels])
    np.testing.assert_allclose(prob, clf.predict_proba(scaler.transform(feats(photos))), rtol=1e-4, atol=1e-6)

    # A recording started afterwards takes over look_at; the readout stays fitted for a later task.
    brain.start_recording("IT", [(70, 170)])
    assert isinstance(brain.look_at(test), NeuroidAssembly)
    brain.start_task("passive")
    assert brain.look_at(test).dims == ("presentation", "neuroid", "time_bin")

    with pytest.raises(ValueError, match=r"fitting_stimuli: no 'image_label' column"):
        brain.start_task("probabilities", stimulus_set(photos))
    with pytest.raises(ValueError, match=r"fitting_stimuli must be a StimulusSet"):
        brain.start_task("probabilities")


def test_brainscore_probes_accept_it(model: convrnn.ConvRNN, photos_and_mirrors: list[Path]) -> None:
    """What Brain-Score's generic plugin tests probe before they score a model."""
    brain = ConvRNNBrainModel(model)
    probe = ProbeModel()
    assert probe.can_start_recording(brain)
    assert probe.can_start_recording_region(brain, BrainModel.RecordingTarget.IT)
    assert not probe.can_start_recording_region(brain, BrainModel.RecordingTarget.V1)
    fitting = stimulus_set(photos_and_mirrors, [p.stem.removesuffix("_mirror") for p in photos_and_mirrors])
    assert probe.can_start_task_specific(brain, BrainModel.Task.probabilities, fitting_stimuli=fitting)
    assert 0 < brain.visual_degrees() < 9000
