"""Frozen decoder scalars (dthresh/tmaxconf) come from the checkpoint, not from the zoo's defaults.

The checkpoints are the reference ``rgc_intermediate`` bundle rewritten with the decoders' scalars
added (by the test bundle writer, :mod:`tests.convert.bundle`), at values other than the defaults.
"""

import numpy as np
import pytest
import torch
from safetensors import safe_open

import convrnn
from convrnn.convert import NameMapError, convert_checkpoint, read_checkpoint, tf_to_state_dict
from convrnn.convert.tf_checkpoint import crc32c
from convrnn.readout import decode
from tests.convert.bundle import write_checkpoint

KW = {"num_classes": 10, "image_size": 194, "width": 1 / 8}
DEAD = {"tnn_model/probs/softmax_beta": np.ones(1, np.float32), "tnn_model/alpha/softmax_beta": np.ones(1, np.float32)}
# On the reference logits (steps 11-16 of 17 decoded), these put the first confident step of both
# images at step 13; the defaults (1.0, 0.9) at step 16, and beta 1.0 with this threshold at step 14.
BETA, THRESHOLD = np.float32(1.0577), np.float32(0.156)


@pytest.fixture(scope="module")
def reference(reference_dir):
    folder = reference_dir / "rgc_intermediate"
    x = torch.from_numpy(np.load(folder / "input_normalized.npy")).permute(0, 3, 1, 2)
    return read_checkpoint(folder / "model.ckpt"), x, torch.from_numpy(np.load(folder / "logits_all_times.npy"))


def test_dthresh_checkpoint_scalars_carried_into_model_and_file(reference, tmp_path):
    tensors, x, logits = reference
    scalars = {"tnn_model/normalize/softmax_beta": np.array(BETA), "tnn_model/decoder_threshold": np.array([THRESHOLD])}
    prefix = tmp_path / "model.ckpt"
    write_checkpoint(prefix, {**tensors, **DEAD, **scalars}, crc=crc32c)

    model = convrnn.create_model("rgc_intermediate_dthresh", **KW)
    out = convert_checkpoint(prefix, model, tmp_path / "dthresh.safetensors")  # refused before
    assert (model.decoder.beta, model.decoder.threshold) == (float(BETA), float(THRESHOLD))
    assert (model.spec.readout.beta, model.spec.readout.threshold) == (float(BETA), float(THRESHOLD))
    with safe_open(str(out), "pt") as f:
        saved = convrnn.ModelSpec.from_json(f.metadata()["spec"])
    assert saved == model.spec and (saved.readout.beta, saved.readout.threshold) == (float(BETA), float(THRESHOLD))

    # The model built from the saved spec and weights decodes with the checkpoint's scalars.
    reloaded = convrnn.create_model(saved, weights=out).eval()
    with torch.no_grad():
        got = reloaded(x).decoded
    window = (11, 17)  # [num_layers, T)
    np.testing.assert_allclose(got, logits[13], atol=1e-4)
    np.testing.assert_allclose(
        got, decode(logits, "threshold", window=window, beta=BETA, threshold=THRESHOLD), atol=1e-4
    )
    # Built by name (the zoo's default scalars), the weights file's saved spec carries the checkpoint's.
    by_name = convrnn.create_model("rgc_intermediate_dthresh", weights=out, **KW)
    assert (by_name.decoder.beta, by_name.decoder.threshold) == (float(BETA), float(THRESHOLD))
    assert by_name.spec.readout.threshold == float(THRESHOLD)
    # The values matter: the defaults, or the default temperature alone, pick other steps.
    assert not torch.allclose(decode(logits, "threshold", window=window), logits[13])
    assert torch.equal(decode(logits, "threshold", window=window, beta=1.0, threshold=THRESHOLD), logits[14])


def test_tmaxconf_threshold_and_learned_temperature(reference):
    tensors, _, _ = reference
    model = convrnn.create_model("rgc_intermediate_tmaxconf", **KW)
    scalars = {"tnn_model/normalize/softmax_beta": np.array([0.37]), "tnn_model/decoder_threshold": np.array([0.75])}
    state = tf_to_state_dict(model, {**tensors, **DEAD, **scalars})
    assert state["decoder.beta"].item() == pytest.approx(0.37)  # learned: a parameter, in the state dict
    assert "decoder.threshold" not in state
    assert model.decoder.threshold == model.spec.readout.threshold == 0.75  # frozen: on the model and spec
    assert model.spec.readout.beta == 1.0  # the spec's beta of a trainable temperature is only its init


def test_bad_scalars_are_refused_and_leave_the_model_alone(reference):
    tensors, _, _ = reference
    model = convrnn.create_model("rgc_intermediate_dthresh", **KW)
    spec = model.spec
    for value, message in ((1.5, r"decoder_threshold: checkpoint has 1\.5; a threshold .* lies in \(0, 1\]"),):
        with pytest.raises(NameMapError, match=message):
            tf_to_state_dict(model, {**tensors, "tnn_model/decoder_threshold": np.array([value])})
    with pytest.raises(NameMapError, match=r"softmax_beta: checkpoint has nan"):
        tf_to_state_dict(model, {**tensors, "tnn_model/normalize/softmax_beta": np.array([np.nan])})
    # A mismatch elsewhere: the scalars are not applied either.
    broken = {k: v for k, v in tensors.items() if not k.endswith("conv4/pre_0/bias")}
    with pytest.raises(NameMapError, match="conv4/pre_0/bias"):
        tf_to_state_dict(model, {**broken, "tnn_model/decoder_threshold": np.array([0.5])})
    assert model.spec is spec and (model.decoder.beta, model.decoder.threshold) == (1.0, 0.9)
