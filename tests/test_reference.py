"""Exactly the reference's math: load the reference TF weights, reproduce its logits at every step.

``$CONVRNN_REFERENCE_DATA/tf/<model>/`` holds, for reduced-width zoo models (channels / 8, 10 classes),
the reference TensorFlow implementation's random weights (biases and memory decays perturbed away
from their constant initial values), its input, its logits at every step and some layer outputs.
"""

import json

import numpy as np
import pytest
import torch

import convrnn
from convrnn.convert import NameMapError, load_tf_weights, tf_to_state_dict
from tests.conftest import REFERENCE_MODELS


def _load(reference_dir, name):
    folder = reference_dir / name
    meta = json.loads((folder / "meta.json").read_text())
    model = convrnn.create_model(name, num_classes=meta["num_classes"], image_size=meta["image_size"], width=1 / 8)
    weights = dict(np.load(folder / "weights.npz"))
    load_tf_weights(model, weights)
    x = torch.from_numpy(np.load(folder / "input_normalized.npy")).permute(0, 3, 1, 2)
    return model.eval(), meta, weights, x


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_logits_every_step_match_reference(reference_dir, name):
    model, meta, _, x = _load(reference_dir, name)
    ref = np.load(reference_dir / name / "logits_all_times.npy")
    with torch.no_grad():
        logits = model(x, times=meta["n_times"]).logits.numpy()
    assert logits.shape == ref.shape
    err = np.abs(logits - ref).max(axis=(1, 2))
    assert err.max() <= 1e-4, f"max |error| per step: {np.round(err, 7).tolist()}"


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_layer_outputs_match_reference(reference_dir, name):
    """Localises a mismatch: each stored layer output at its first driven step, the next, and T-1."""
    model, meta, _, x = _load(reference_dir, name)
    stored = np.load(reference_dir / name / "layer_outputs.npz")
    with torch.no_grad():
        feats = model.features(x, areas=list(model.layers), times=meta["n_times"])
    for key in stored.files:
        layer, t = key.rsplit("_t", 1)
        ours = feats[layer][int(t)].numpy()
        if ours.ndim == 4:
            ours = ours.transpose(0, 2, 3, 1)  # NCHW -> the reference's NHWC
        ref = stored[key]
        assert ours.shape == ref.shape, key
        assert (np.abs(ours - ref) <= 1e-4 + 1e-4 * np.abs(ref)).all(), f"{key}: max err {np.abs(ours - ref).max()}"


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_parameter_count_and_timing_match_reference(reference_dir, name):
    model, meta, _, _ = _load(reference_dir, name)
    assert sum(p.numel() for p in model.parameters()) == meta["trainable_param_count"]
    n_state = sum(1 for v in meta["variables"] if not v["trainable"])
    assert sum(b.numel() for b in model.buffers()) == n_state  # the frozen memory decays
    assert model.first_stimulus_steps() == meta["first_stimulus_step"]


def test_name_map_rejects_leftovers_on_either_side(reference_dir):
    model, _, weights, _ = _load(reference_dir, "rgc_shallow")
    extra = dict(weights, **{"tnn_model/conv3/ReciprocalGateCell/cell/stray/weights": np.zeros((3, 3, 1, 1))})
    with pytest.raises(NameMapError, match="stray"):
        tf_to_state_dict(model, extra)
    missing = {k: v for k, v in weights.items() if not k.endswith("conv4/pre_0/bias")}
    with pytest.raises(NameMapError, match="conv4/pre_0/bias"):
        tf_to_state_dict(model, missing)
    # Optimizer slots are not weights: ignored.
    slots = dict(weights, **{"tnn_model/conv1/pre_0/bias/Momentum": np.zeros(8)})
    tf_to_state_dict(model, slots)


def test_decoder_scalars_map_onto_the_readout(reference_dir):
    """tmaxconf/dthresh checkpoints carry the decoders' scalars under the names the reference uses."""
    _, _, weights, _ = _load(reference_dir, "rgc_intermediate")
    model = convrnn.create_model("rgc_intermediate_tmaxconf", num_classes=10, image_size=194, width=1 / 8)
    dead = {"tnn_model/probs/softmax_beta": np.ones(1), "tnn_model/alpha/softmax_beta": np.ones(1)}
    state = tf_to_state_dict(model, {**weights, **dead, "tnn_model/normalize/softmax_beta": np.array([0.37])})
    assert state["decoder.beta"].item() == pytest.approx(0.37)
    model = convrnn.create_model("rgc_intermediate_dthresh", num_classes=10, image_size=194, width=1 / 8)
    frozen = {"tnn_model/normalize/softmax_beta": np.ones(1), "tnn_model/decoder_threshold": np.array([0.9])}
    tf_to_state_dict(model, {**weights, **dead, **frozen})
    # A frozen scalar that differs from the default is the checkpoint's (tests/convert/test_decoder_scalars.py).
    tf_to_state_dict(model, {**weights, **frozen, "tnn_model/decoder_threshold": np.array([0.5])})
    assert model.decoder.threshold == model.spec.readout.threshold == 0.5
    # A 'last'-decoder model has no place for decoder scalars: the checkpoint is for another model.
    plain = convrnn.create_model("rgc_intermediate", num_classes=10, image_size=194, width=1 / 8)
    with pytest.raises(NameMapError, match="decoder_threshold"):
        tf_to_state_dict(plain, {**weights, **frozen})
