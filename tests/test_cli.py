"""The command line: help, listing, specs, feature extraction on real photos."""

import numpy as np
import pytest
from PIL import Image

from convrnn import ModelSpec
from convrnn.cli import main


def test_help_and_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "extract" in capsys.readouterr().out
    assert main(["list", "*rgc*"]) == 0
    out = capsys.readouterr().out
    assert "rgc_intermediate" in out and "73.00" in out and "gru_shallow" not in out


def test_spec_round_trips_through_a_file(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    assert main(["spec", "rgc_intermediate", "--width", "0.125", "--out", str(path)]) == 0
    spec = ModelSpec.load(path)
    assert spec.name == "rgc_intermediate" and len(spec.edges) == 15
    assert main(["spec", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_extract_on_image_files_saves_features(tmp_path, capsys):
    rng = np.random.default_rng(0)
    files = []
    for i, size in enumerate([(40, 50), (64, 48)]):
        f = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(f)
        files.append(str(f))
    out = tmp_path / "feats.npz"
    args = ["extract", *files, "--model", "rgc_shallow", "--image-size", "32", "--width", "0.0625", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "<- stimulus arrives" in text and "V4" in text
    feats = np.load(out)
    assert feats["V4_t00"].shape[0] == 2 and "IT_t25" in feats.files  # neural presentation: 26 steps
    assert not list(tmp_path.glob(".*tmp*"))


def test_extract_bad_input_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no such image file"):
        main(["extract", str(tmp_path / "missing.png"), "--width", "0.0625", "--image-size", "32"])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["extract", str(bad), "--width", "0.0625", "--image-size", "32"])


def test_demo_runs_on_scikit_image_photos(capsys):
    assert main(["demo", "--image-size", "32", "--width", "0.0625", "--areas", "V4", "--times", "8"]) == 0
    text = capsys.readouterr().out
    assert "astronaut" in text and "<- stimulus arrives" in text
