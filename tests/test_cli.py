"""The command line: help, listing, specs, feature extraction on real photos."""

import json

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
    args = ["--width", "0.0625", "--image-size", "32"]
    assert main(["extract", str(tmp_path / "missing.png"), *args]) == 2
    assert "no such image file" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["extract", str(bad), *args]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "bad.png" in err and len(err.strip().splitlines()) == 1


def _image_folder(root, classes, per_class, rng, mode="RGB"):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(a).convert(mode).save(root / c / f"{i}.png")


def test_eval_on_an_imagenet_layout_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _image_folder(tmp_path / "data" / "val", ["n01", "n02", "n03"], 3, rng)
    # Grayscale and RGBA files are converted, not rejected.
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(tmp_path / "data/val/n01/gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 4), dtype=np.uint8)).save(tmp_path / "data/val/n02/rgba.png")
    out = tmp_path / "acc.json"
    args = ["eval", "--data", str(tmp_path / "data"), "--model", "rgc_shallow", "--num-classes", "3"]
    args += ["--image-size", "32", "--width", "0.0625", "--workers", "0", "--batch-size", "4", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "(11 images)" in text and "readout (last)" in text
    result = json.loads(out.read_text())
    assert result["n"] == 11 and len(result["top1_per_step"]) == 16
    assert all(a5 == 1.0 for a5 in result["top5_per_step"])  # 3 classes: always in the top 5


def test_eval_rejects_folders_that_are_not_imagenet_layout(tmp_path, capsys):
    rng = np.random.default_rng(1)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(flat / "a.png")
    args = ["--model", "rgc_shallow", "--num-classes", "2", "--image-size", "32", "--width", "0.0625"]
    assert main(["eval", "--data", str(flat), *args]) == 2
    assert "holds no class folders" in capsys.readouterr().err
    _image_folder(tmp_path / "one", ["a"], 1, rng)
    (tmp_path / "one" / "b").mkdir()
    assert main(["eval", "--data", str(tmp_path / "one"), *args]) == 2
    assert "holds no images" in capsys.readouterr().err
    _image_folder(tmp_path / "three", ["a", "b", "c"], 1, rng)
    assert main(["eval", "--data", str(tmp_path / "three"), *args]) == 2  # as every bad input: one line, code 2
    assert "has 3 classes but the model has 2 outputs" in capsys.readouterr().err


def test_extract_defaults_to_scikit_image_photos(capsys):
    assert main(["extract", "--image-size", "32", "--width", "0.0625", "--areas", "V4", "--times", "8"]) == 0
    text = capsys.readouterr().out
    assert "astronaut" in text and "<- stimulus arrives" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--width", "0"], "width: must be > 0, got 0.0"),
        (["train", "--width", "-1"], "width: must be > 0, got -1.0"),
        (["train", "--threads", "0"], "threads: must be >= 1, got 0"),
        (["train", "--image-size", "8", "--data", "."], "image_size: the models need at least 32 px, got 8"),
        (["extract", "--image-size", "8"], "image_size: must be an integer >= 32 (px), got 8"),
        (["extract", "--width", "0"], "width: must be a number > 0, got 0.0"),
    ],
)
def test_impossible_sizes_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main([*argv, *(["--out", str(tmp_path / "run")] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"convrnn: {message}"
    assert not (tmp_path / "run").exists()  # nothing written


def test_out_paths_that_cannot_be_written_are_named_before_any_work(tmp_path, capsys):
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["spec", "rgc_shallow", "--out", str(tmp_path / "folder.yaml")], "is a folder; name a file in it"),
        (["spec", "rgc_shallow", "--out", str(tmp_path / "m.txt")], "name a .yaml or .yml or .json file"),
        (["spec", "rgc_shallow", "--out", str(tmp_path / "no" / "m.yaml")], f"no folder {str(tmp_path / 'no')!r}"),
        (["extract", "--out", str(tmp_path / "folder.yaml")], "name a .npz file"),
        (["train", "--out", str(tmp_path / "afile"), "--max-steps", "1"], "is a file; a run needs a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder.yaml"]  # nothing half-written


def test_extract_says_when_the_weights_are_random(capsys):
    assert main(["extract", "--image-size", "32", "--width", "0.0625", "--areas", "V4", "--times", "6"]) == 0
    assert "has random weights (seed 0); pass --weights" in capsys.readouterr().err
