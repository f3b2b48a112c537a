"""Requested ms bins onto 10-ms model steps (pure NumPy: runs with or without Brain-Score)."""

from __future__ import annotations

import numpy as np
import pytest

from convrnn.brainscore import TimeBinError, as_time_bins, steps_for_bins, time_bin_weights


def test_bins_inside_one_step_take_that_step() -> None:
    w = time_bin_weights([(70, 80), (80, 90), (0, 10), (250, 260)], times=26)
    assert w.shape == (4, 26)
    assert [int(np.argmax(r)) for r in w] == [7, 8, 0, 25]
    np.testing.assert_array_equal(w.max(axis=1), 1.0)


def test_overlap_weights() -> None:
    w = time_bin_weights([(75, 85), (100, 200), (72, 95)], times=26)
    np.testing.assert_allclose(w[0, [7, 8]], [0.5, 0.5])
    np.testing.assert_allclose(w[1, 10:20], 0.1)
    # 8 ms of step 7, 10 of step 8, 5 of step 9.
    np.testing.assert_allclose(w[2, [7, 8, 9]], np.array([8, 10, 5]) / 23)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w[0, [t for t in range(26) if t not in (7, 8)]] == 0).all()


def test_zero_width_bin_takes_the_step_holding_it() -> None:
    w = time_bin_weights([(75, 75), (80, 80), (0, 0), (260, 260)], times=26)
    assert [int(np.argmax(r)) for r in w] == [7, 8, 0, 25]
    np.testing.assert_array_equal(w.sum(axis=1), 1.0)


def test_offset_and_step_length() -> None:
    w = time_bin_weights([(50, 70)], times=4, step_ms=20.0, offset_ms=30.0)  # steps [30,50) [50,70) ...
    np.testing.assert_array_equal(w, [[0, 1, 0, 0]])
    with pytest.raises(TimeBinError, match=r"\[30, 110\] ms"):
        time_bin_weights([(10, 40)], times=4, step_ms=20.0, offset_ms=30.0)


@pytest.mark.parametrize(
    ("bins", "message"),
    [
        ([(250, 270)], r"time_bins\[0\] = \(250, 270\) ms: outside the unrolled window \[0, 260\] ms"),
        ([(70, 80), (-10, 0)], r"time_bins\[1\] = \(-10, 0\) ms: outside"),
        ([(90, 80)], r"time_bins\[0\] = \(90, 80\) ms: ends before it starts"),
        ([(float("nan"), 80)], r"must be finite"),
        ([(70, 80, 90)], r"pairs"),
        ([], r"non-empty"),
        (["ab"], r"pairs"),
    ],
)
def test_bad_bins_name_the_bin(bins: list, message: str) -> None:
    with pytest.raises(TimeBinError, match=message):
        time_bin_weights(bins, times=26)


def test_steps_for_bins() -> None:
    w = time_bin_weights([(70, 80), (100, 120), (115, 125)], times=26)
    assert steps_for_bins(w) == [7, 10, 11, 12]


def _object_array(pairs: list[tuple[int, int]]) -> np.ndarray:
    out = np.empty(len(pairs), dtype=object)
    out[:] = pairs
    return out


def _squeezed(pair: tuple[int, int]) -> np.ndarray:
    out = np.empty((), dtype=object)
    out[()] = pair
    return out


@pytest.mark.parametrize(
    "given",
    [
        [(70, 80), (100, 200)],
        ((70, 80), (100, 200)),
        [[70, 80], [100, 200]],
        np.array([[70, 80], [100, 200]]),
        np.array([[70.0, 80.0], [100.0, 200.0]], dtype=np.float32),
        _object_array([(70, 80), (100, 200)]),  # assembly['time_bin'].values of a temporal assembly
        [_squeezed((70, 80)), _squeezed((100, 200))],
        [np.array([70, 80]), np.array([100, 200])],
    ],
    ids=["list", "tuple", "lists", "int-array", "float32-array", "object-array", "0d-arrays", "row-arrays"],
)
def test_every_form_brainscore_passes(given) -> None:
    assert as_time_bins(given) == [(70.0, 80.0), (100.0, 200.0)]
    np.testing.assert_array_equal(time_bin_weights(given, times=26), time_bin_weights([(70, 80), (100, 200)], 26))


def test_single_squeezed_bin_and_xarray_coords() -> None:
    import pandas as pd
    import xarray as xr

    # Brain-Score's timebins_from_assembly on an assembly whose time bin was squeezed away.
    assert as_time_bins([_squeezed((70, 170))]) == [(70.0, 170.0)]
    assert as_time_bins(_squeezed((70, 170))) == [(70.0, 170.0)]
    index = pd.MultiIndex.from_arrays([[70, 80], [80, 90]], names=["time_bin_start", "time_bin_end"])
    assert as_time_bins(index) == [(70.0, 80.0), (80.0, 90.0)]
    coord = xr.DataArray(_object_array([(70, 80), (80, 90)]), dims=["time_bin"])
    assert as_time_bins(coord) == [(70.0, 80.0), (80.0, 90.0)]
    assert as_time_bins(coord[0]) == [(70.0, 80.0)]  # a squeezed coordinate: 0-d


@pytest.mark.parametrize("given", [5, (70, 170), "ab", [70, 170], np.array([70, 170]), [(70, 80, 90)], []])
def test_forms_that_are_not_pairs(given) -> None:
    with pytest.raises(TimeBinError, match=r"time_bins: expected a non-empty list of \(start_ms, end_ms\) pairs"):
        as_time_bins(given)
