"""Converting the reference's TensorFlow checkpoints end to end: bundle -> .safetensors -> model."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import convrnn
from convrnn.cli import main
from convrnn.convert import NameMapError, convert_checkpoint
from tests.conftest import REFERENCE_MODELS


def _meta(reference_dir, name):
    return json.loads((reference_dir / name / "meta.json").read_text())


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_converted_checkpoint_reproduces_reference_logits(reference_dir, tmp_path, name):
    meta = _meta(reference_dir, name)
    kw = {"num_classes": meta["num_classes"], "image_size": meta["image_size"], "width": 1 / 8}
    out = tmp_path / f"{name}.safetensors"
    convert_checkpoint(reference_dir / name / "model.ckpt", convrnn.create_model(name, **kw), out)
    model = convrnn.create_model(name, weights=out, **kw).eval()
    x = torch.from_numpy(np.load(reference_dir / name / "input_normalized.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(x, times=meta["n_times"]).logits.numpy()
    ref = np.load(reference_dir / name / "logits_all_times.npy")
    assert np.abs(logits - ref).max() <= 1e-4
    with safe_open(str(out), "pt") as f:
        info = f.metadata()
    assert info["model"] == name and convrnn.ModelSpec.from_json(info["spec"]) == model.spec


def test_convert_command_and_wrong_model(reference_dir, tmp_path, capsys):
    ckpt = str(reference_dir / "gru_shallow" / "model.ckpt")
    out = tmp_path / "gru.safetensors"
    args = ["--num-classes", "10", "--image-size", "160", "--width", "0.125", "--out", str(out)]
    assert main(["convert", ckpt, "--model", "gru_shallow", *args]) == 0
    assert out.exists() and "converted" in capsys.readouterr().out
    # The checkpoint of another model: every mismatch is listed, and nothing is written.
    bad = tmp_path / "ugrnn.safetensors"
    assert main(["convert", ckpt, "--model", "ugrnn_shallow", *args[:-1], str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ConvGRUCell" in err and "ConvUGRNNCell" in err
    assert not bad.exists() and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(NameMapError):
        convert_checkpoint(
            ckpt, convrnn.create_model("ugrnn_shallow", num_classes=10, image_size=160, width=1 / 8), bad
        )
    # Right model, wrong width: shapes differ, named in the error.
    assert main(["convert", ckpt, "--model", "gru_shallow", *args[:5], "0.25", "--out", str(bad)]) == 2
    assert "checkpoint shape" in capsys.readouterr().err
