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


def test_ost_command(files, experiment, tmp_path, capsys):
    from convrnn.neural.ost import object_solution_times
    from convrnn.neural.recordings import load_recordings
    from convrnn.neural.score import aligned_features

    _, args = files
    out = tmp_path / "ost"
    rec = load_recordings(experiment.recordings, region="IT")
    rng = np.random.default_rng(0)
    target = rng.uniform(3.0, 4.5, size=len(rec.stimulus_ids))  # some images never reach theirs
    behavior = tmp_path / "behavior.csv"
    behavior.write_text("stimulus_id,dprime\n" + "".join(f"{s},{d}\n" for s, d in zip(rec.stimulus_ids, target)))
    common = ["--offset-ms", "20", "--splits", "4", "--out", str(out), "--features", str(tmp_path / "f.nc")]
    assert main(["ost", *args, *common, "--behavior", str(behavior)]) == 0, capsys.readouterr().err
    res = json.loads((out / "ost.json").read_text())
    assert (out / "ost.png").stat().st_size > 1000
    # The command's numbers are the library's: OSTs of the trial-averaged recordings and of the model's
    # features at the aligned steps, with each image's behavioural target.
    ((_, X),) = aligned_features(experiment.features, rec, offset_ms=20)
    for got, resp in ((res["neural_ost_ms"], rec.Y), (res["systems"]["rgc_shallow"]["ost_ms"], X)):
        want = object_solution_times(resp, rec.objects, target, rec.bin_start, rec.bin_end, n_splits=4).ost_ms
        np.testing.assert_allclose(np.array(got, dtype=float), want, atol=1e-3)
        assert 0 < np.isfinite(want).sum() < len(want)
    assert set(res["systems"]) == {"rgc_shallow", "rgc_shallow feedforward sweep [graded]"}
    assert main(["ost", *args, "--no-control", "--out", str(out)]) == 2
    assert "give --target-dprime X or --behavior FILE" in capsys.readouterr().err
    behavior.write_text("stimulus_id,dprime\nim000,2\n")
    assert main(["ost", *args, *common, "--no-control", "--behavior", str(behavior)]) == 2
    assert "no behavioural d' for 95 recorded stimuli, e.g. 'im001'" in capsys.readouterr().err
