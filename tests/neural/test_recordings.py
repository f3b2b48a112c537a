import numpy as np
import pytest
import xarray as xr

from convrnn.neural.assembly import save_assembly
from convrnn.neural.recordings import RecordingsError, load_recordings


def trials(reps=(3, 3, 3), sites=4, bins=5, regions=None, seed=0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    stim = np.concatenate([[f"s{i}"] * r for i, r in enumerate(reps)])
    rng.shuffle(stim)  # trials interleaved, as recorded
    obj = np.array([f"obj{int(s[1:]) % 2}" for s in stim])
    starts = 70.0 + 10 * np.arange(bins)
    return xr.DataArray(
        rng.normal(size=(len(stim), sites, bins)),
        dims=("presentation", "neuroid", "time_bin"),
        coords={
            "stimulus_id": ("presentation", stim),
            "object_name": ("presentation", obj),
            "neuroid_id": ("neuroid", [f"n{i}" for i in range(sites)]),
            "region": ("neuroid", regions or ["IT"] * sites),
            "time_bin_start": ("time_bin", starts),
            "time_bin_end": ("time_bin", starts + 10),
        },
    )


def test_averages_and_repetitions_from_a_file(tmp_path):
    da = trials(reps=(3, 2, 4))
    path = save_assembly(da, tmp_path / "rec.nc")
    rec = load_recordings(path)
    # Brain-Score's average_repetition order: sorted by (stimulus_id, object_name), the presentation
    # coordinates in their order (tests/brainscore checks this against Brain-Score itself).
    assert list(rec.stimulus_ids) == ["s0", "s1", "s2"] != list(dict.fromkeys(da.stimulus_id.values))
    for j, s in enumerate(rec.stimulus_ids):
        rows = da.values[da.stimulus_id.values == s]  # (trials, sites, bins)
        np.testing.assert_allclose(rec.Y[:, j], rows.mean(0).T)
        # The first 2 (= the minimum count) trials in file order, per stimulus.
        np.testing.assert_allclose(rec.Y_reps[:, :, j], rows[:2].transpose(0, 2, 1))
        assert rec.objects[j] == f"obj{int(s[1:]) % 2}"
    assert rec.Y_reps.shape == (2, 5, 3, 4) and rec.n_reps == 2
    np.testing.assert_array_equal(rec.bin_start, 70.0 + 10 * np.arange(5))


def test_stimulus_order_follows_the_coordinates_and_repetitions_their_coordinate():
    da = trials(reps=(3, 3, 3, 3))
    # object_name first (stimulus_id re-added last): sorted by object, then stimulus.
    first_object = da.drop_vars("stimulus_id").assign_coords(stimulus_id=("presentation", da.stimulus_id.values))
    assert list(load_recordings(first_object).stimulus_ids) == ["s0", "s2", "s1", "s3"]
    assert list(load_recordings(da).stimulus_ids) == ["s0", "s1", "s2", "s3"]
    # One row per stimulus (already averaged): the order as given.
    once = trials(reps=(1, 1, 1, 1))
    assert list(load_recordings(once).stimulus_ids) == list(once.stimulus_id.values)
    # A complete repetition coordinate orders Y_reps by its values, whatever the file order.
    rep = np.zeros(da.sizes["presentation"], dtype=int)
    for s in np.unique(da.stimulus_id.values):
        rows = np.flatnonzero(da.stimulus_id.values == s)
        rep[rows] = [2, 0, 1]  # file order: repetition 2 first
    rec = load_recordings(da.assign_coords(repetition=("presentation", rep)))
    for j, s in enumerate(rec.stimulus_ids):
        rows = da.values[da.stimulus_id.values == s]
        np.testing.assert_allclose(rec.Y_reps[:, :, j], rows[[1, 2, 0]].transpose(0, 2, 1))
    # An incomplete one (a repetition missing for one stimulus) falls back to file order.
    rep[np.flatnonzero(da.stimulus_id.values == "s0")[0]] = 7
    rec = load_recordings(da.assign_coords(repetition=("presentation", rep)))
    rows = da.values[da.stimulus_id.values == "s0"]
    np.testing.assert_allclose(rec.Y_reps[:, :, 0], rows.transpose(0, 2, 1))


def test_squeezed_single_bin_assembly():
    da = trials(bins=1)
    expected = load_recordings(da)
    by_edges = da.squeeze("time_bin")  # scalar time_bin_start / time_bin_end
    pair = np.empty((), dtype=object)
    pair[()] = (70, 80)
    by_pair = by_edges.drop_vars(["time_bin_start", "time_bin_end"]).assign_coords(time_bin=pair)  # Brain-Score's
    for squeezed in (by_edges, by_pair):
        rec = load_recordings(squeezed)
        np.testing.assert_array_equal(rec.Y, expected.Y)
        np.testing.assert_array_equal(rec.Y_reps, expected.Y_reps)
        assert (rec.bin_start.tolist(), rec.bin_end.tolist()) == ([70.0], [80.0])
    with pytest.raises(RecordingsError, match=r"need a scalar time_bin \(start, end\) or scalar time_bin_start"):
        load_recordings(by_edges.drop_vars(["time_bin_start", "time_bin_end"]))


def test_region_selection_and_single_trials():
    da = trials(reps=(1, 1, 1), regions=["IT", "V4", "IT", "V4"])
    rec = load_recordings(da, region="V4")
    assert list(rec.neuroid_ids) == ["n1", "n3"] and rec.Y.shape == (5, 3, 2)
    assert rec.Y_reps is None


def test_bad_recordings(tmp_path):
    with pytest.raises(RecordingsError, match="no sites of region 'V1'"):
        load_recordings(trials(), region="V1")
    with pytest.raises(RecordingsError, match="missing coordinate 'object_name'"):
        load_recordings(trials().drop_vars("object_name"))
    bad = trials()
    bad[2, 1, 3] = np.nan
    s = bad.stimulus_id.values[2]
    with pytest.raises(RecordingsError, match=f"NaN/inf responses, first at stimulus '{s}', neuroid 'n1', bin 100-110"):
        load_recordings(bad)
    with pytest.raises(RecordingsError, match="time_bin_start must increase"):
        load_recordings(trials().isel(time_bin=[1, 0, 2]))
    mixed = trials()
    obj = mixed.object_name.values.copy()
    obj[np.flatnonzero(mixed.stimulus_id.values == "s0")[0]] = "other"
    with pytest.raises(RecordingsError, match="stimulus 's0' has object_name"):
        load_recordings(mixed.assign_coords(object_name=("presentation", obj)))
    with pytest.raises(RecordingsError, match="dims must be"):
        load_recordings(trials().rename(time_bin="t"))
    with pytest.raises(RecordingsError, match="no such assembly file"):
        load_recordings(tmp_path / "missing.nc")
