"""Neural fit: the fast path gives the sklearn loop's numbers; scores, ceilings and errors mean what they say."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

from convrnn.neural import (
    FitResult,
    ceil_score,
    cv_splits,
    fit_per_bin,
    fit_per_bin_sklearn,
    pearson_r,
    repetition_halves,
    split_half_ceiling,
)

# Small sizes: the sklearn reference loop on them costs well under a second.
BINS, STIMULI, FEATURES, SITES, SPLITS, COMPONENTS = 3, 60, 20, 5, 4, 3
SMALL = dict(n_components=COMPONENTS, n_splits=SPLITS)


def _data(kind: str, shared: bool, seed: int = 0, features: int = FEATURES, sites: int = SITES):
    rng = np.random.default_rng(seed)
    objects = np.arange(STIMULI) % 4
    X = rng.standard_normal((STIMULI, features) if shared else (BINS, STIMULI, features))
    if kind == "random":
        Y = rng.standard_normal((BINS, STIMULI, sites))
    else:  # responses = linear map of the features + noise, with a different gain per bin
        W = rng.standard_normal((features, sites))
        gain = np.array([0.3, 1.0, 2.0])[:, None, None]
        Y = gain * np.broadcast_to(X @ W, (BINS, STIMULI, sites)) + 2.0 * rng.standard_normal((BINS, STIMULI, sites))
    return X, Y, objects


def _both(X, Y, objects, **kw) -> tuple[FitResult, FitResult]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarnings on noise-only data
        return fit_per_bin(X, Y, objects, **kw), fit_per_bin_sklearn(X, Y, objects, **kw)


def _assert_same(fast: FitResult, ref: FitResult) -> None:
    assert fast.r.shape == ref.r.shape
    np.testing.assert_array_equal(np.isnan(fast.r), np.isnan(ref.r))
    np.testing.assert_allclose(fast.r, ref.r, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.predictions, ref.predictions, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.score, ref.score, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fast.test_index, ref.test_index)


# --- fast path == sklearn loop --------------------------------------------------------------------


@pytest.mark.parametrize("mapping", ["pls", "ridge"])
@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-bin-X", "shared-X"])
def test_fast_matches_sklearn(mapping, kind, shared):
    X, Y, objects = _data(kind, shared)
    fast, ref = _both(X, Y, objects, mapping=mapping, **SMALL)
    assert fast.r.shape == (BINS, SPLITS, SITES)
    _assert_same(fast, ref)


def test_pls_matches_sklearn_more_sites_than_features():
    # Fewer features than sites: the power iteration runs in feature space instead of site space.
    X, Y, objects = _data("structured", shared=False, features=6, sites=9)
    _assert_same(*_both(X, Y, objects, **SMALL))


def test_pls_matches_sklearn_single_site_and_all_components():
    # One site: sklearn stops after one iterate. n_components = n_features: the last component
    # takes what is left of X.
    X, Y, objects = _data("structured", shared=False, features=5, sites=1)
    _assert_same(*_both(X, Y, objects, n_components=5, n_splits=SPLITS))


def test_pls_matches_sklearn_many_components_offset_features():
    # Large feature offsets (like unnormalised activations) and 20 components on 54 training stimuli.
    X, Y, objects = _data("structured", shared=False, features=30, sites=8)
    _assert_same(*_both(1e3 * X + 5e3, Y + 100.0, objects, n_components=20, n_splits=SPLITS))


def test_ridge_matches_sklearn_more_features_than_stimuli():
    # 80 features > 54 training stimuli: the dual (kernel) form, as sklearn's cholesky solver picks.
    X, Y, objects = _data("structured", shared=False, features=80)
    _assert_same(*_both(X, Y, objects, mapping="ridge", alpha=10.0, **SMALL))


def test_constant_and_sparse_sites_are_nan_in_both_paths():
    X, Y, objects = _data("structured", shared=False)
    Y = Y.copy()
    Y[:, :, 0] = 0.0  # silent site (e.g. before response onset)
    Y[:, :, 1] = 0.5  # constant non-zero site (with an exact mean; see the module docstring for 7.3)
    Y[:, :, 2] = 0.0
    Y[:, 5, 2] = 1.0  # one responsive stimulus: constant over either the training or the test stimuli of every split
    fast, ref = _both(X, Y, objects, n_components=COMPONENTS, n_splits=8)
    _assert_same(fast, ref)
    assert np.isnan(fast.r[:, :, :3]).all()
    assert not np.isnan(fast.r[:, :, 3:]).any()


def test_shared_features_equal_per_bin_copies():
    X, Y, objects = _data("structured", shared=True)
    shared = fit_per_bin(X, Y, objects, **SMALL)
    copied = fit_per_bin(np.repeat(X[None], BINS, axis=0), Y, objects, **SMALL)
    np.testing.assert_allclose(shared.r, copied.r, rtol=0, atol=1e-12)


# --- splits, correlation and aggregation ----------------------------------------------------------


def test_splits_are_sklearns_stratified_shuffle_splits():
    X, Y, objects = _data("random", shared=False)
    result = fit_per_bin(X, Y, objects, seed=7, **SMALL)
    sss = StratifiedShuffleSplit(n_splits=SPLITS, test_size=0.1, random_state=7)
    expected = np.stack([test for _, test in sss.split(np.zeros((STIMULI, 1)), objects)])
    np.testing.assert_array_equal(result.test_index, expected)
    np.testing.assert_array_equal(result.predictions.shape, (BINS, SPLITS, expected.shape[1], SITES))


def test_pearson_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 30, 4))
    r = pearson_r(a, b, axis=0)
    np.testing.assert_allclose(r, [pearsonr(a[:, j], b[:, j])[0] for j in range(4)], rtol=0, atol=1e-12)
    assert np.isnan(pearson_r(np.ones((30, 1)), b[:, :1], axis=0)).all()


def test_score_is_mean_over_splits_of_median_over_sites():
    X, Y, objects = _data("structured", shared=False)
    result = fit_per_bin(X, Y, objects, **SMALL)
    np.testing.assert_allclose(result.score, np.median(result.r, axis=2).mean(axis=1), rtol=0, atol=1e-15)
    # The other order (mean over splits, then median over sites) is a different number here.
    assert not np.allclose(result.score, np.median(result.r.mean(axis=1), axis=1))


# --- ground truth ---------------------------------------------------------------------------------


def test_known_linear_map_scores_high_and_shuffled_features_score_near_zero():
    rng = np.random.default_rng(2)
    n, p, q = 400, 20, 20
    objects = np.arange(n) % 8
    X = rng.standard_normal((2, n, p))
    W = rng.standard_normal((p, 3)) @ rng.standard_normal((3, q))  # rank 3: within 5 PLS components
    Y = X @ W + 0.5 * rng.standard_normal((2, n, q))
    kw = dict(n_components=5, n_splits=5)
    assert (fit_per_bin(X, Y, objects, **kw).score > 0.9).all()
    # Shuffled stimulus order breaks the feature-response pairing. Null r over 40 test stimuli has sd
    # ~1/sqrt(39) = 0.16; the median of 20 sites ~0.045; the mean of 5 splits ~0.02. 0.12 is ~6 sd.
    shuffled = X[:, rng.permutation(n)]
    assert (np.abs(fit_per_bin(shuffled, Y, objects, **kw).score) < 0.12).all()


def test_split_half_ceiling_matches_spearman_brown_of_known_reliability():
    rng = np.random.default_rng(3)
    reps, bins, n, q = 10, 2, 200, 60
    signal = rng.standard_normal((bins, n, q))  # variance 1
    noise_var = 5.0
    Y_reps = signal + np.sqrt(noise_var) * rng.standard_normal((reps, bins, n, q))
    # A half (5 repetitions) averages the noise down to variance 1, so halves correlate at
    # rho = 1 / (1 + 1) = 0.5 and Spearman-Brown gives 2 rho / (1 + rho) = 2/3 (the reliability of the
    # 10-repetition mean, 1 / (1 + 5/10)).
    rho = 1.0 / (1.0 + noise_var / (reps // 2))
    expected = 2 * rho / (1 + rho)
    ceiling = split_half_ceiling(Y_reps, n_splits=10, seed=0)
    # Tolerance: per-site r over 200 stimuli has sd (1 - rho^2)/sqrt(199) = 0.053, x0.89 through
    # Spearman-Brown; the median of 60 sites has sd ~1.25 * 0.047 / sqrt(60) = 0.0076 (the 10 half
    # splits reuse the same data, so no further shrinkage is assumed). 0.04 is > 5 sd.
    np.testing.assert_allclose(ceiling, expected, atol=0.04)


def test_fit_reports_ceiling_and_ceiled_score_under_each_convention():
    rng = np.random.default_rng(4)
    X, _, objects = _data("structured", shared=False)
    Y_reps = (X @ rng.standard_normal((FEATURES, SITES)))[None] + 3.0 * rng.standard_normal((6, BINS, STIMULI, SITES))
    Y = Y_reps.mean(axis=0)
    result = fit_per_bin(X, Y, objects, Y_reps=Y_reps, n_ceiling_splits=4, seed=1, **SMALL)
    np.testing.assert_allclose(result.ceiling, split_half_ceiling(Y_reps, n_splits=4, seed=1))
    # The default is Brain-Score 2's explained variance: r^2 / rho.
    assert result.convention == "r2/rho"
    np.testing.assert_allclose(result.ceiled, result.score**2 / result.ceiling)
    for convention, expected in (
        ("r/rho", result.score / result.ceiling),
        ("r/sqrt(rho)", result.score / np.sqrt(result.ceiling)),
    ):
        other = fit_per_bin(X, Y, objects, Y_reps=Y_reps, n_ceiling_splits=4, ceiling_convention=convention, **SMALL)
        assert other.convention == convention
        np.testing.assert_array_equal(other.score, result.score)  # raw r does not depend on the convention
        np.testing.assert_allclose(other.ceiled, expected)
        np.testing.assert_allclose(ceil_score(result.score, result.ceiling, convention), expected)
    plain = fit_per_bin(X, Y, objects, **SMALL)
    assert plain.ceiling is None and plain.ceiled is None and plain.convention is None


def test_true_signal_scores_one_under_r2_over_rho():
    """Recordings = a known signal + noise at four reliabilities (those of the issue's four bins): the
    signal itself, as features, scores about 1 under r^2/rho (and r/sqrt(rho)) in every bin, and
    about 1/sqrt(rho) > 1 under r/rho, the over-correction."""
    rng = np.random.default_rng(5)
    n, q, k, reps = 1000, 60, 3, 6
    rho = np.array([0.19, 0.405, 0.672, 0.78])  # reliabilities of the mean of 6 repetitions
    Z = rng.standard_normal((n, k))
    signal = Z @ rng.standard_normal((k, q))
    signal = (signal - signal.mean(0)) / signal.std(0)  # variance 1 per site
    noise_sd = np.sqrt(reps * (1 / rho - 1))  # one repetition's noise: the mean of 6 has reliability rho
    Y_reps = signal[None, None] + noise_sd[None, :, None, None] * rng.standard_normal((reps, 4, n, q))
    objects = np.arange(n) % 10
    fits = {
        c: fit_per_bin(Z, Y_reps.mean(0), objects, n_components=k, Y_reps=Y_reps, ceiling_convention=c)
        for c in ("r2/rho", "r/rho", "r/sqrt(rho)")
    }
    np.testing.assert_allclose(fits["r2/rho"].ceiling, rho, atol=0.03)
    # Sampling spread: over 12 seeds of this set-up the r^2/rho score per bin had sd <= 0.03 (0.03 in
    # the noisiest bin, 0.006 in the cleanest) and mean 1.00; 0.12 is 4 sd.
    np.testing.assert_allclose(fits["r2/rho"].ceiled, 1.0, atol=0.12)
    np.testing.assert_allclose(fits["r/sqrt(rho)"].ceiled, 1.0, atol=0.06)
    np.testing.assert_allclose(fits["r/rho"].ceiled, 1 / np.sqrt(rho), rtol=0.06)
    assert (fits["r/rho"].ceiled > 1.08).all()  # a "ceiled" score above 1 for the true signal


# --- Brain-Score's defaults: split seed, ceiling halves, spantime ----------------------------------


def test_default_splits_are_brainscores():
    # Brain-Score: StratifiedShuffleSplit(10, train_size=0.9, test_size=None, random_state=1).
    objects = np.repeat(np.arange(7), 13)
    train, test = cv_splits(objects)
    sss = StratifiedShuffleSplit(n_splits=10, train_size=0.9, test_size=None, random_state=1)
    for s, (tr, te) in enumerate(sss.split(np.zeros((len(objects), 1)), objects)):
        np.testing.assert_array_equal(train[s], tr)
        np.testing.assert_array_equal(test[s], te)


@pytest.mark.parametrize(("reps", "sizes"), [(9, (4, 5)), (6, (3, 3)), (2, (1, 1))])
def test_ceiling_halves_split_odd_repetitions_as_brainscore(reps, sizes):
    halves = repetition_halves(reps, n_splits=10)
    ss = ShuffleSplit(n_splits=10, train_size=0.5, random_state=1)
    for (a, b), (tr, te) in zip(halves, ss.split(np.zeros((reps, 1))), strict=True):
        np.testing.assert_array_equal(a, tr)
        np.testing.assert_array_equal(b, te)
        assert (len(a), len(b)) == sizes and not set(a) & set(b)
    dropped = repetition_halves(reps, n_splits=10, odd_repetitions="drop")
    assert all(len(a) == len(b) == reps // 2 and not set(a) & set(b) for a, b in dropped)


def test_split_half_ceiling_by_hand_with_odd_repetitions():
    rng = np.random.default_rng(6)
    Y_reps = rng.standard_normal((1, 2, 40, 5)) + 1.5 * rng.standard_normal((9, 2, 40, 5))
    for odd in ("split", "drop"):
        per_split = []
        for a, b in repetition_halves(9, n_splits=5, seed=3, odd_repetitions=odd):
            r = np.array(
                [
                    [pearsonr(Y_reps[a, t, :, j].mean(0), Y_reps[b, t, :, j].mean(0))[0] for j in range(5)]
                    for t in range(2)
                ]
            )
            per_split.append(np.median(2 * r / (1 + r), axis=1))
        got = split_half_ceiling(Y_reps, n_splits=5, seed=3, odd_repetitions=odd)
        np.testing.assert_allclose(got, np.mean(per_split, axis=0), rtol=0, atol=1e-12)
    assert not np.allclose(
        split_half_ceiling(Y_reps, n_splits=5, odd_repetitions="split"),
        split_half_ceiling(Y_reps, n_splits=5, odd_repetitions="drop"),
    )


@pytest.mark.parametrize("mapping", ["pls", "ridge"])
def test_spantime_fits_one_map_across_bins(mapping):
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.linear_model import Ridge

    X, Y, objects = _data("structured", shared=False)
    kw = dict(mapping=mapping, n_components=COMPONENTS, n_splits=SPLITS, alpha=3.0)
    fast, ref = _both(X, Y, objects, spantime=True, **kw)
    np.testing.assert_array_equal(fast.r, ref.r)  # one implementation serves both paths
    for s in range(SPLITS):
        tr, te = np.setdiff1d(np.arange(STIMULI), fast.test_index[s]), fast.test_index[s]
        model = PLSRegression(COMPONENTS, scale=False) if mapping == "pls" else Ridge(alpha=3.0)
        model.fit(np.concatenate(X[:, tr]), np.concatenate(Y[:, tr]))
        for b in range(BINS):
            np.testing.assert_allclose(fast.predictions[b, s], model.predict(X[b, te]), rtol=0, atol=1e-10)
    # A different model from the per-bin fits: the bins' gains differ (0.3, 1, 2), one map cannot follow.
    assert not np.allclose(fast.predictions, fit_per_bin(X, Y, objects, **kw).predictions, atol=1e-3)
    # Components are bounded by the stacked training samples, not one bin's.
    fit_per_bin(X[:, :, :1].repeat(80, axis=2) + np.arange(80), Y, objects, spantime=True, n_components=60, n_splits=2)


def test_given_splits_are_used():
    X, Y, objects = _data("structured", shared=False)
    train, test = cv_splits(objects, n_splits=3, seed=11)
    given = fit_per_bin(X, Y, objects, splits=(train, test), n_components=COMPONENTS)
    drawn = fit_per_bin(X, Y, objects, seed=11, n_splits=3, n_components=COMPONENTS)
    np.testing.assert_array_equal(given.test_index, test)
    np.testing.assert_allclose(given.r, drawn.r, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=r"splits: split 0 is not a partition of the 60 stimuli"):
        fit_per_bin(X, Y, objects, splits=(train[:, :-1], test), n_components=COMPONENTS)
    with pytest.raises(ValueError, match=r"splits: test indices must be integers in \[0, 60\)"):
        fit_per_bin(X, Y, objects, splits=(train, test + 60), n_components=COMPONENTS)


# --- errors ---------------------------------------------------------------------------------------


def _bad_cases():
    X, Y, objects = _data("random", shared=False)
    x_nan = X.copy()
    x_nan[1, 2, 3] = np.nan
    y_inf = Y.copy()
    y_inf[0, 0, 0] = np.inf
    lonely = objects.copy()
    lonely[0] = 99  # an object with a single stimulus
    return {
        "stimuli": ((X[:, :-1], Y, objects), {}, r"X has 59 stimuli but Y has 60"),
        "bins": ((X[:2], Y, objects), {}, r"X has 2 time bins but Y has 3"),
        "nan-X": ((x_nan, Y, objects), {}, r"X contains NaN or inf .*\(1, 2, 3\)"),
        "inf-Y": ((X, y_inf, objects), {}, r"Y contains NaN or inf"),
        "components": (
            (X, Y, objects),
            {"n_components": 21},
            r"n_components must be in \[1, min\(n_train=54, n_features=20\)\]",
        ),
        "objects": ((X, Y, lonely), {}, r"objects: object 99 has 1 stimulus"),
        "mapping": ((X, Y, objects), {"mapping": "lasso"}, r"mapping must be one of \('pls', 'ridge'\), got 'lasso'"),
        "convention": ((X, Y, objects), {"ceiling_convention": "r"}, r"ceiling_convention must be one of .* got 'r'"),
        "odd": ((X, Y, objects), {"odd_repetitions": "keep"}, r"odd_repetitions must be one of .* got 'keep'"),
        "Y_reps": (
            (X, Y, objects),
            {"Y_reps": np.zeros((4, STIMULI, SITES, BINS))},
            r"Y_reps must be \(reps, bins, stimuli, sites\)",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
@pytest.mark.parametrize("fn", [fit_per_bin, fit_per_bin_sklearn], ids=["fast", "sklearn"])
def test_clear_value_errors(case, fn):
    args, kw, pattern = _bad_cases()[case]
    kw = {**SMALL, **kw}
    with pytest.raises(ValueError, match=pattern) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)
