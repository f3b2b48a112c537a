"""Object solution times: d' by hand, interpolation by hand, recovery of known decode times, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, spearmanr

from convrnn.neural.ost import (
    OSTResult,
    SolutionTimes,
    i1_dprimes,
    image_dprimes,
    object_solution_times,
    ost_consistency,
    ost_consistency_per_split,
    solution_times,
)

STARTS = 70.0 + 10.0 * np.arange(10)  # 10-ms bins from 70 ms, as the recordings'
ENDS = STARTS + 10.0


# --- per-image d' ------------------------------------------------------------------------------


def test_i1_dprime_two_objects_by_hand():
    # Image 0 (object A): P = (0.8, 0.2); image 1 (object B): P = (0.3, 0.7).
    # Image 0: hit = P(A over B) = 0.8; false alarm = B's images called A = 0.3.
    # Image 1: hit = P(B over A) = 0.7; false alarm = A's images called B = 0.2.
    # z(0.8) - z(0.3) = 0.8416212 + 0.5244005 = 1.3660217 = z(0.7) - z(0.2).
    d = i1_dprimes(np.array([[0.8, 0.2], [0.3, 0.7]]), np.array(["A", "B"]))
    np.testing.assert_allclose(d, [1.3660217463, 1.3660217463], atol=1e-9)


def _i1_loop(P: np.ndarray, y: np.ndarray, cap: float = 5.0) -> np.ndarray:
    """Brain-Score's i1 written out image by image (its target_distractor_scores, dprime, clip, mean)."""
    n, k = P.shape
    choose = {}  # (image, choice) -> probability of `choice` over the image's own object
    for i in range(n):
        for c in range(k):
            if c != y[i]:
                with np.errstate(invalid="ignore"):
                    choose[i, c] = P[i, c] / (P[i, c] + P[i, y[i]])
    out = np.empty(n)
    for i in range(n):
        ds = []
        for c in range(k):
            if c == y[i]:
                continue
            far = np.nanmean([choose[j, y[i]] for j in range(n) if y[j] == c])
            with np.errstate(divide="ignore", invalid="ignore"):
                ds.append(float(np.clip(norm.ppf(1 - choose[i, c]) - norm.ppf(far), -cap, cap)))
        out[i] = np.nanmean(ds) if np.isfinite(ds).any() else np.nan
    return out


def test_i1_dprime_matches_direct_loop_with_extremes():
    rng = np.random.default_rng(1)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    P = rng.dirichlet(np.ones(3), size=len(y))
    P[0] = [1.0, 0.0, 0.0]  # certain and right: hit rate 1 -> z = inf -> clipped at +5
    P[3] = [1.0, 0.0, 0.0]  # certain and wrong: hit rate 0 for distractor 0 -> clipped at -5
    P[5] = [0.0, 0.5, 0.5]
    expected = _i1_loop(P, y)
    got = i1_dprimes(P, y)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got.max() <= 5.0 and got.min() >= -5.0


def test_i1_dprime_zero_when_all_images_look_alike():
    P = np.tile([0.5, 0.3, 0.2], (6, 1))
    np.testing.assert_allclose(i1_dprimes(P, np.array([0, 0, 1, 1, 2, 2])), 0.0, atol=1e-12)


# --- interpolation ------------------------------------------------------------------------------


def test_solution_times_interpolation_by_hand():
    starts = np.array([70.0, 80, 90, 100, 110])
    ends = starts + 10
    d = np.array(
        [
            # image 0: hit at 100 ms (1.2); the highest sub-threshold bin before it is 80 ms (0.5)
            [0.1, 0.5, 0.3, 1.2, 2.0],
            # image 1: already above the target in the first bin
            [1.5, 2.0, 2.0, 2.0, 2.0],
            # image 2: never reaches the target
            [0.1, 0.2, 0.3, 0.4, 0.9],
            # image 3: NaN bins are skipped; hit at 110 ms from 0.6 at 90 ms
            [np.nan, 0.2, 0.6, np.nan, 1.4],
            # image 4: exactly at the target counts as reached
            [0.0, 1.0, 0.0, 0.0, 0.0],
        ]
    ).T
    got = solution_times(d, 1.0, starts, ends)
    expected = [
        80 + (1.0 - 0.5) * (100 - 80) / (1.2 - 0.5),  # 94.2857
        70.0,
        np.nan,
        90 + (1.0 - 0.6) * (110 - 90) / (1.4 - 0.6),  # 100
        70 + (1.0 - 0.0) * (80 - 70) / (1.0 - 0.0),  # 80: the line reaches the target at the hit
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # Bin centres shift every interpolated time by half a bin.
    np.testing.assert_allclose(solution_times(d, 1.0, starts, ends, anchor="center"), np.add(expected, 5.0), atol=1e-9)
    # "previous" interpolates image 0 from 90 ms (0.3) instead of the 80-ms maximum.
    prev = solution_times(d, 1.0, starts, ends, lower="previous")
    assert prev[0] == pytest.approx(90 + (1.0 - 0.3) * 10 / (1.2 - 0.3))
    np.testing.assert_allclose(prev[1:], expected[1:], atol=1e-9)
    # A per-image target: image 2 solved at 110 ms once its target is 0.9, image 0 at 80 ms (0.5).
    per_image = solution_times(d, np.array([0.5, 1.0, 0.9, 1.0, 1.0]), starts, ends)
    assert per_image[0] == pytest.approx(80.0)
    assert per_image[2] == pytest.approx(100 + (0.9 - 0.4) * 10 / (0.9 - 0.4))


def _brainscore_loop(d: np.ndarray, target: float, times: np.ndarray) -> np.ndarray:
    """Brain-Score's OST loop (keep the best sub-threshold bin, stop at the first hit, interpolate)."""
    out = np.full(d.shape[1], np.nan)
    for i in range(d.shape[1]):
        last = hit = None
        for t, v in zip(times, d[:, i]):
            if hit is None:
                if v < target and (last is None or last[1] < v):
                    last = (t, v)
                if v >= target:
                    hit = (t, v)
        if hit is None:
            continue
        out[i] = hit[0] if last is None else last[0] + (target - last[1]) * (hit[0] - last[0]) / (hit[1] - last[1])
    return out


def test_solution_times_match_brainscore_loop_on_random_curves():
    rng = np.random.default_rng(3)
    d = np.cumsum(rng.normal(0.2, 0.6, size=(10, 200)), axis=0)
    d[rng.random(d.shape) < 0.1] = np.nan
    got = solution_times(d, 1.5, STARTS, ENDS)
    np.testing.assert_allclose(got, _brainscore_loop(d, 1.5, STARTS), rtol=0, atol=1e-9)
    assert np.isnan(got).any() and np.isfinite(got).sum() > 100  # both cases were exercised


# --- recovery of known decode times ---------------------------------------------------------------


def _delayed_signal(seed: int = 0):
    """4 objects x 20 images, 10 bins, 8 features: each image's object pattern switches on at bin k_i.

    Most images (17 per object) are decodable from bin 1; 3 per object switch on at a random bin in
    3..8, so the object-level false-alarm rates are steady while those images turn decodable. Image
    0 carries object 1's pattern from bin 1 instead of its own object's: it is never decodable as
    object 0.
    """
    rng = np.random.default_rng(seed)
    n_objects, per, late_per, n_bins, n_feats = 4, 20, 3, 10, 8
    objects = np.repeat(np.arange(n_objects), per)
    pattern = rng.standard_normal((n_objects, n_feats))
    late = np.arange(len(objects)) % per < late_per
    onset = np.where(late, rng.integers(3, 9, size=len(objects)), 1)
    signal = pattern[objects]
    signal[0], onset[0] = pattern[1], 1
    X = rng.standard_normal((n_bins, len(objects), n_feats))
    X += 8.0 * (np.arange(n_bins)[:, None, None] >= onset[None, :, None]) * signal[None]
    return X, objects, onset, late


def test_recovers_known_solution_times():
    X, objects, onset, late = _delayed_signal()
    result = object_solution_times(X, objects, 3.0, STARTS, ENDS, n_splits=5, n_jobs=1)
    assert isinstance(result, SolutionTimes) and result.dprimes.shape == (10, 80)
    ost = result.ost_ms
    assert np.isnan(ost[0]) and not result.solved[0]  # never decodable as its own object
    timed = late.copy()
    timed[0] = False
    assert np.isfinite(ost[timed]).all()
    # The pattern is on from the start of bin k: the crossing lies between the lower bin and that start.
    err = ost[timed] - STARTS[onset[timed]]
    assert spearmanr(ost[timed], onset[timed]).statistic > 0.85
    assert np.median(np.abs(err)) <= 10.0
    # The images decodable from bin 1 are solved early.
    assert np.median(ost[~late]) <= STARTS[1] + 10.0
    # Interpolating from the bin just before the hit lands within a bin of the onset.
    prev = solution_times(result.dprimes, 3.0, STARTS, ENDS, lower="previous")
    err = prev[timed] - STARTS[onset[timed]]
    assert spearmanr(prev[timed], onset[timed]).statistic > 0.9
    assert np.median(np.abs(err)) <= 5.0 and np.abs(err).max() <= 15.0


def test_no_information_gives_zero_dprime_and_signal_gives_positive():
    # Bin 0: identical features for every image (a layer the stimulus has not reached yet);
    # bin 1: noise; bin 2: object pattern + noise. Two objects, so the two-margin SVM path runs.
    rng = np.random.default_rng(2)
    objects = np.repeat([0, 1], 12)
    X = rng.standard_normal((3, 24, 6))
    X[0] = 0.7
    X[2] += 3.0 * rng.standard_normal((2, 6))[objects]
    # Raw margins (no calibration) have the scale the regularisation gives them: smaller d'.
    for calibration_folds, margin in ((3, 2.0), (0, 0.5)):
        d = image_dprimes(X, objects, n_splits=4, calibration_folds=calibration_folds, n_jobs=1)
        np.testing.assert_allclose(d[0], 0.0, atol=1e-9)
        assert abs(d[1].mean()) < 0.5
        assert d[2].min() > margin and d[2].mean() > d[1].mean() + margin


def test_image_dprimes_deterministic_and_thread_independent():
    X, objects, _, _ = _delayed_signal(seed=1)
    X, objects = X[:4, ::2], objects[::2]  # 40 images, 4 bins: enough to compare
    a = image_dprimes(X, objects, n_splits=5, n_jobs=1)
    b = image_dprimes(X, objects, n_splits=5, n_jobs=2)
    np.testing.assert_array_equal(a, b)
    c = image_dprimes(X, objects, n_splits=5, n_jobs=1, seed=7)
    assert not np.array_equal(a, c)  # the seed moves the folds


# --- consistency ----------------------------------------------------------------------------------


def test_consistency_over_images_solved_by_both():
    model = np.array([10.0, np.nan, 30.0, 40.0, 50.0, 60.0])
    neural = np.array([1.0, 2.0, np.nan, 4.0, 3.0, 9.0])
    res = ost_consistency(model, neural)
    assert isinstance(res, OSTResult) and res.n_images == 4  # images 0, 3, 4, 5
    ref = spearmanr([10.0, 40.0, 50.0, 60.0], [1.0, 4.0, 3.0, 9.0])
    assert res.r == pytest.approx(ref.statistic) and res.r == pytest.approx(0.8)
    assert res.p == pytest.approx(ref.pvalue)
    few = ost_consistency(np.array([1.0, 2.0, np.nan]), np.array([1.0, 2.0, 3.0]))
    assert few.n_images == 2 and math.isnan(few.r) and math.isnan(few.p)
    const = ost_consistency(np.array([5.0, 5.0, 5.0]), np.array([1.0, 2.0, 3.0]))
    assert const.n_images == 3 and math.isnan(const.r)


# --- bad input --------------------------------------------------------------------------------------


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


GOOD_X = np.random.default_rng(0).standard_normal((2, 12, 3))
GOOD_OBJ = np.repeat([0, 1, 2], 4)


@pytest.mark.parametrize(
    ("features", "objects", "kw", "match"),
    [
        (GOOD_X[0], GOOD_OBJ, {}, r"features must be \(bins, images, features\)"),
        (GOOD_X, GOOD_OBJ[:-1], {}, r"objects must have one label per image \(12\)"),
        (np.where(np.arange(3) == 2, np.nan, GOOD_X), GOOD_OBJ, {}, r"features contains NaN.*index \(0, 0, 2\)"),
        (GOOD_X, np.zeros(12, int), {}, r"objects: need at least 2 objects"),
        (GOOD_X, GOOD_OBJ, {"n_splits": 5}, r"object 0 has 4 images, fewer than n_splits=5"),
        (GOOD_X, GOOD_OBJ, {"n_splits": 1}, r"n_splits must be >= 2"),
        (GOOD_X, GOOD_OBJ, {"n_splits": 2, "calibration_folds": 3}, r"calibration_folds=3 exceeds the 2 training"),
        (GOOD_X, GOOD_OBJ, {"n_splits": 2, "calibration_folds": 1}, r"calibration_folds must be 0"),
    ],
)
def test_image_dprimes_errors(features, objects, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        image_dprimes(features, objects, **{"n_splits": 2, **kw})
    _one_line(e)


@pytest.mark.parametrize(
    ("starts", "ends", "target", "kw", "match"),
    [
        ([70.0, 80, 80], [80.0, 90, 100], 1.0, {}, r"bin_starts_ms must be strictly increasing: bin 2 \(80.0\)"),
        ([70.0, 80, 90], [80.0, 90, 85], 1.0, {}, r"bin_ends_ms must be strictly increasing"),
        ([70.0, 80, 90], [70.0, 90, 100], 1.0, {}, r"bin_ends_ms: bin 0 ends at 70.0, not after its start"),
        ([70.0, 80], [80.0, 90], 1.0, {}, r"bin_starts_ms has 2 bins but the d' array has 3"),
        ([70.0, 80, 90], [80.0, 90], 1.0, {}, r"1-D of equal length"),
        ([70.0, np.nan, 90], [80.0, 90, 100], 1.0, {}, r"bin_starts_ms contains NaN"),
        (
            [70.0, 80, 90],
            [80.0, 90, 100],
            np.ones(3),
            {},
            r"target_dprime must be a scalar or one value per image \(4\)",
        ),
        ([70.0, 80, 90], [80.0, 90, 100], 1.0, {"anchor": "end"}, r"anchor must be one of"),
        ([70.0, 80, 90], [80.0, 90, 100], 1.0, {"lower": "min"}, r"lower must be one of"),
    ],
)
def test_solution_times_errors(starts, ends, target, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        solution_times(np.zeros((3, 4)), target, np.array(starts), np.array(ends), **kw)
    _one_line(e)


def test_other_errors():
    with pytest.raises(ValueError, match=r"model_ost has 3 images but neural_ost has 2") as e:
        ost_consistency(np.ones(3), np.ones(2))
    _one_line(e)
    with pytest.raises(ValueError, match=r"model_ost and neural_ost must be 1-D") as e:
        ost_consistency(np.ones((3, 1)), np.ones(3))
    _one_line(e)
    with pytest.raises(ValueError, match=r"probabilities must be \(images, objects\) = \(2, 2\)") as e:
        i1_dprimes(np.ones((2, 3)) / 3, np.array([0, 1]))
    _one_line(e)
    # The one-call form checks the bins and the target before any fitting.
    with pytest.raises(ValueError, match=r"bin_starts_ms has 3 bins but the d' array has 2") as e:
        object_solution_times(GOOD_X, GOOD_OBJ, 1.0, np.array([70.0, 80, 90]), np.array([80.0, 90, 100]))
    _one_line(e)
    with pytest.raises(ValueError, match=r"target_dprime must be a scalar or one value per image \(12\)") as e:
        object_solution_times(GOOD_X, GOOD_OBJ, np.ones(5), np.array([70.0, 80]), np.array([80.0, 90]))
    _one_line(e)


# --- Brain-Score's decoder objective and per-split protocol ----------------------------------------


def _logistic_probabilities(X_train, y_train, X_test, weight_decay=0.463):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)
    clf = LogisticRegression(C=1 / (weight_decay * len(y_train)), max_iter=10_000)
    clf.fit(scaler.transform(X_train), y_train)
    return clf.predict_proba(scaler.transform(X_test))


def test_logistic_decoder_by_hand():
    from sklearn.model_selection import StratifiedKFold

    X, objects, onset, late = _delayed_signal(seed=3)
    X, objects, onset, late = X[:, ::2], objects[::2], onset[::2], late[::2]  # 40 images
    d = image_dprimes(X, objects, n_splits=4, decoder="logistic", n_jobs=1)
    folds = list(StratifiedKFold(n_splits=4, shuffle=True, random_state=0).split(X[0], objects))
    for b in (0, 5, 9):
        P = np.empty((len(objects), 4))
        for train, test in folds:
            P[test] = _logistic_probabilities(X[b, train], objects[train], X[b, test])
        np.testing.assert_allclose(d[b], i1_dprimes(P, objects), rtol=0, atol=1e-6)
    # It decodes: the late images' d' rises after their onset.
    timed = late & (np.arange(len(objects)) > 0)
    ost = solution_times(d, 1.5, STARTS, ENDS)
    assert spearmanr(ost[timed], onset[timed], nan_policy="omit").statistic > 0.7


def test_per_split_protocol_is_brainscores():
    from sklearn.model_selection import ShuffleSplit

    X, objects, onset, late = _delayed_signal(seed=4)
    reference = np.where(late, STARTS[onset], STARTS[1])  # the known decode times as the reference OSTs
    res = ost_consistency_per_split(X, objects, 1.5, reference, STARTS, ENDS, decoder="logistic", n_jobs=1)
    splits = list(ShuffleSplit(n_splits=10, test_size=0.1, random_state=1).split(X[0]))
    np.testing.assert_array_equal(res.test_index, np.stack([t for _, t in splits]))
    assert res.split_r.shape == res.n_images.shape == (10,)
    np.testing.assert_allclose(res.r, np.nanmean(res.split_r))
    # Split 0 by hand: decoders fitted on its 72 training images, d' of its 8 test images from their own
    # probabilities only (false alarms from the test split), OSTs, Spearman with the reference.
    train, test = splits[0]
    present = np.unique(objects[test])
    D = np.stack(
        [
            i1_dprimes(_logistic_probabilities(X[b, train], objects[train], X[b, test])[:, present], objects[test])
            for b in range(10)
        ]
    )
    c = ost_consistency(solution_times(D, 1.5, STARTS, ENDS), reference[test])
    np.testing.assert_allclose(res.split_r[0], c.r, rtol=0, atol=1e-9)
    assert res.n_images[0] == c.n_images
    # The known decode times are recovered, split by split (a split whose 8 test images all have the same
    # reference time has no rank correlation: NaN, skipped in the mean, as Brain-Score's xarray mean does).
    assert res.r > 0.5 and np.isfinite(res.split_r).sum() >= 5
    with pytest.raises(ValueError, match=r"reference_ost must have one value per image \(80\)"):
        ost_consistency_per_split(X, objects, 3.0, reference[:5], STARTS, ENDS)
    with pytest.raises(ValueError, match=r"decoder must be one of \('svm', 'logistic'\), got 'tree'"):
        ost_consistency_per_split(X, objects, 3.0, reference, STARTS, ENDS, decoder="tree")
