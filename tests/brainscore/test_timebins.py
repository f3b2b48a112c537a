"""Requested ms bins onto 10-ms model steps (pure NumPy: runs with or without Brain-Score)."""

from __future__ import annotations

import numpy as np
import pytest

from convrnn.brainscore import TimeBinError, steps_for_bins, time_bin_weights


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
