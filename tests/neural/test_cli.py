import json

import numpy as np
import pytest
from safetensors.torch import save_file

from convrnn.cli import main
from convrnn.neural.assembly import load_assembly, save_assembly


@pytest.fixture(scope="module")
def files(experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    weights = root / "hidden.safetensors"
    save_file({k: v.contiguous() for k, v in experiment.model.state_dict().items()}, str(weights))
    neural = save_assembly(experiment.recordings, root / "recordings.nc")
    model = ["--model", "rgc_shallow", "--num-classes", "10", "--image-size", "32", "--width", "0.125"]
    return root, [*model, "--weights", str(weights), "--stimuli", str(experiment.stimuli), "--neural", str(neural)]


def test_fit_command(files, capsys):
    root, args = files
    out, cache = root / "out", root / "feats.nc"
    rc = main(["fit", *args, "--offset-ms", "20", "--components", "10", "--out", str(out), "--features", str(cache)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "70-80" in text and "250-260" in text and "ceiling" in text
    res = json.loads((out / "predictivity.json").read_text())["results"]
    assert [r["alignment"] for r in res] == ["steps", "uniform", "graded"]
    model, uniform, graded = (np.array(r["ceiled"], dtype=float) for r in res)
    assert len(model) == 19 and np.nanmean(model) > 0.85
    assert np.nanmean(uniform) < np.nanmean(model) and np.nanmean(graded) < np.nanmean(model)
    assert (out / "predictivity.png").stat().st_size > 1000
    assert load_assembly(cache).sizes["time_bin"] == 26  # features cached for the next run


def test_fit_errors(files, experiment, tmp_path, capsys):
    _, args = files
    assert main(["fit", *args, "--region", "V4", "--no-control", "--out", str(tmp_path)]) == 2
    assert "no sites of region 'V4'" in capsys.readouterr().err
    renamed = experiment.recordings.assign_coords(
        stimulus_id=("presentation", [f"x{s}" for s in experiment.recordings.stimulus_id.values])
    )
    bad = save_assembly(renamed, tmp_path / "renamed.nc")
    i = args.index("--neural")
    args = [*args[:i], "--neural", str(bad), *args[i + 2 :]]
    assert main(["fit", *args, "--no-control", "--out", str(tmp_path)]) == 2
    assert "recorded stimuli have no model features, e.g. 'xim000'" in capsys.readouterr().err
