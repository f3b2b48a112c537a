"""Readouts over time: last, window average, max-confidence, threshold."""

import pytest
import torch

import convrnn
from convrnn.readout import decode


def _logits():
    # 4 steps, 2 examples, 3 classes. Example 0 gets confident at step 1 (p~0.95), peaks at step 3;
    # example 1 never reaches 0.9 and is most confident at step 2.
    lo = torch.zeros(4, 2, 3)
    lo[1, 0] = torch.tensor([4.0, 0.0, 0.0])
    lo[3, 0] = torch.tensor([0.0, 8.0, 0.0])
    lo[2, 1] = torch.tensor([0.0, 0.0, 1.5])
    lo[3, 1] = torch.tensor([0.5, 0.0, 0.0])
    return lo


def test_last_and_window_average():
    lo = _logits()
    assert torch.equal(decode(lo, "last"), lo[-1])
    assert torch.allclose(decode(lo, "avg", window=(1, 3)), lo[1:3].mean(0))
    assert torch.allclose(decode(lo, "avg"), lo.mean(0))
    with pytest.raises(ValueError, match="window"):
        decode(lo, "avg", window=(3, 9))


def test_max_confidence_picks_each_examples_most_confident_step():
    lo = _logits()
    out = decode(lo, "max_conf")
    assert torch.equal(out[0], lo[3, 0]) and torch.equal(out[1], lo[2, 1])
    # Steps outside the window are not candidates.
    out = decode(lo, "max_conf", window=(3, 4))
    assert torch.equal(out[1], lo[3, 1])


def test_confidence_temperature_changes_the_chosen_step():
    # Step 0: [2, 0, 0] (max p 0.79 at beta=1, 0.38 at beta=0.1);
    # step 1: [10, 9.5, 0] (max p 0.62 at beta=1, 0.43 at beta=0.1).
    lo = torch.tensor([[[2.0, 0.0, 0.0]], [[10.0, 9.5, 0.0]]])
    assert torch.equal(decode(lo, "max_conf", beta=1.0)[0], lo[0, 0])
    assert torch.equal(decode(lo, "max_conf", beta=0.1)[0], lo[1, 0])


def test_threshold_takes_the_first_confident_step_else_the_most_confident():
    lo = _logits()
    out = decode(lo, "threshold", threshold=0.9)
    assert torch.equal(out[0], lo[1, 0])  # first step with max prob >= 0.9 (not the peak at 3)
    assert torch.equal(out[1], lo[2, 1])  # never confident: fall back to max-confidence
    with pytest.raises(ValueError, match="unknown 'vote'"):
        decode(lo, "vote")
    with pytest.raises(ValueError, match=r"expected \(T, B, K\)"):
        decode(lo[0], "last")


def test_model_decodes_with_its_spec_readout():
    spec = convrnn.model_spec("rgc_shallow", num_classes=3, image_size=32, width=0.0625)
    spec.readout.decoder = "threshold"
    model = convrnn.create_model(spec)
    out = model(torch.randn(2, 3, 32, 32))
    # The readout first sees the stimulus at step 5; the reference decodes from num_layers = 6.
    assert torch.equal(out.decoded, decode(out.logits, "threshold", window=(6, 16)))
    assert not list(model.decoder.parameters())


def test_trainable_decoder_scalars_are_parameters():
    spec = convrnn.model_spec("rgc_shallow", num_classes=3, image_size=32, width=0.0625)
    spec.readout.decoder, spec.readout.trainable = "threshold", True
    model = convrnn.create_model(spec)
    assert {n for n, _ in model.decoder.named_parameters()} == {"beta", "threshold"}
    assert 0 <= model.decoder.beta.item() < 1
