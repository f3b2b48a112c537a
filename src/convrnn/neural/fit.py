"""Neural fit: map model features to neural recordings per 10-ms time bin, cross-validated.

Conventions follow Brain-Score's ``CrossRegressedCorrelation``:

* **Splits.** ``n_splits`` random 90/10 train/test splits of the stimuli, stratified by object label
  (``sklearn.model_selection.StratifiedShuffleSplit(n_splits, test_size=test_size, random_state=seed)``;
  ``seed=1`` by default, Brain-Score's ``random_state``). The same splits are used for every time bin,
  so bins are comparable. The splits index the stimuli in the order given; for Brain-Score's splits,
  give them in the order of Brain-Score's averaged assembly (:func:`~convrnn.neural.load_recordings`
  does).
* **Mapping.** Per bin and split, a linear map from features to all sites at once is fitted on the
  training stimuli: PLS regression (``PLSRegression(n_components, scale=False)``, the default) or
  ridge regression (``Ridge(alpha)``, with intercept). ``spantime=True`` fits one map per split on the
  training stimuli of *all* bins stacked as samples and predicts each bin with it (Brain-Score's
  ``spantime_pls``, used by its temporal MajajHong2015 benchmarks).
* **Score.** Pearson r between predicted and recorded responses over the test stimuli, per site.
  Aggregation order (Brain-Score's): for each split, the median of r over sites; then the mean of
  those medians over splits. ``FitResult.r`` keeps the full (bins, splits, sites) array.
* **Ceiling.** Split-half reliability ρ of the recordings with Spearman–Brown correction
  (:func:`split_half_ceiling`, Brain-Score's ``internal_consistency``: ``n_splits`` random halves of the
  repetitions, ``ShuffleSplit(train_size=0.5, random_state=seed)``; with an odd count the halves differ
  by one, 4/5 of 9, unless ``odd_repetitions="drop"``).
* **Ceiled score** (:func:`ceil_score`), a named convention, always reported beside the raw r:

  - ``"r2/rho"`` (default; Brain-Score 2's ``explained_variance``, used by ``NeuralBenchmark``):
    ``score**2 / ceiling``. ρ is the reliability of the trial-averaged responses, i.e. the share of
    their variance that is signal, and a perfect model's r is about √ρ, so a perfect model scores
    about 1. The sign of r is lost (a negative r scores as its absolute value).
  - ``"r/rho"`` (Brain-Score 1; Brain-Score 2's ``Kar2019-ost`` ``ceil_score``): ``score / ceiling``.
    Over-corrects: a perfect model scores about 1/√ρ, above 1 whenever the data are noisy.
  - ``"r/sqrt(rho)"`` (Spearman's correction for attenuation): ``score / sqrt(ceiling)``: the square
    root of ``r2/rho`` with r's sign, on the correlation scale; a perfect model scores about 1.

Two implementations give the same numbers (to 1e-6, tested):

* :func:`fit_per_bin_sklearn` — the reference: a plain loop over bins and splits calling scikit-learn.
* :func:`fit_per_bin` — the fast path (the one to use): all splits of a few bins at once with stacked
  NumPy linear algebra. For PLS it replays scikit-learn's own NIPALS algorithm rather than a
  different PLS variant, because sklearn's power iteration stops at a loose tolerance
  (``||w_i - w_{i-1}||^2 < 1e-6``): exact-SVD weight vectors change r by up to 0.026 (a noise-only bin)
  and 0.003 (a bin with signal) on the benchmark's data. The fast path reproduces the *same* iterates,
  with the same stopping iteration, but cheaply:

  - Every NIPALS quantity is expressed through the cross-product ``C_k = X_k^T Y_k`` (features x
    sites) of the deflated, centred training data: the x-weight iterate is ``x_{i+1} ∝ C_k C_k^T x_i``
    starting from ``x_1 ∝ C_k e_j`` (``j``: first non-constant site), exactly sklearn's sequence.
  - The iteration runs in the smaller of the two spaces: with ``z_i = C_k^T x_i`` it is
    ``z_{i+1} = B z_i / sqrt(z_i^T B z_i)`` with ``B = C_k^T C_k`` (sites x sites), and sklearn's
    stopping statistic is ``||x_{i+1} - x_i||^2 = 2 - 2 (z_i.z_i) / sqrt(z_i^T B z_i)``. One
    sites-by-sites matrix-vector product per iteration replaces four stimuli-by-(features+sites)
    ones in sklearn, and the matrices of a chunk of items stay in cache.
  - Deflation ``X_{k+1} = X_k - t p^T``, ``Y_{k+1} = Y_k - t q^T`` becomes ``C_{k+1} = C_k - (t.t) p q^T``
    and a rank-2 update of ``B``; scores ``t = X_k w`` are formed from the centred training data
    and earlier scores. Coefficients follow sklearn: ``x_rotations = W pinv(P^T W)``,
    ``coef = x_rotations Q^T``, intercept = training mean of Y.

  Ridge is closed form: ``(X^T X + alpha I)^{-1}`` applied through a Cholesky factorisation (primal
  when features <= training stimuli, dual/kernel form otherwise, as sklearn does); the features'
  Gram matrix per split is ``G_all - G_test`` so the work per split scales with the test set.

Conditions for the exact agreement (documented, not silently "fixed"):

* **Non-degenerate residual.** The deflated responses must not vanish before ``n_components``
  components are extracted. If ``Y`` is an exact (noise-free) linear function of fewer than
  ``n_components`` PLS directions, the later components are fitted to round-off noise, and the two
  paths pick different (meaningless) directions. Real recordings always carry noise.
* **Stopping statistic near the tolerance.** The two paths compute the stopping statistic with
  different round-off (~1e-15); if it lands within that distance of ``tol = 1e-6`` they could stop one
  iteration apart (probability ~1e-8 per component).
* **Constant sites.** A site that is constant over the training stimuli is zeroed as sklearn does
  at the first component (its rule: every centred value below ``10 * eps``); its predictions are then
  constant and its r is NaN in both paths. NaN r values are skipped in the medians and means (as
  xarray's ``skipna`` does in Brain-Score). Silent sites (all 0), and any constant whose training mean
  is exact in floating point, agree exactly. The one exception: a site that is exactly constant at a
  value whose mean does not round back to it (e.g. 7.3 repeated 54 times can leave a residue of
  ~1e-14 > 10 eps). sklearn then does not zero it and, if it is the first non-zero site, starts its
  power iteration from X_c^T (residue * 1), a vector of pure round-off; the result depends on
  rounding and differs from the converged direction by up to the iteration's tolerance (~1e-3 in r).
  The fast path zeroes every exactly constant site instead.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "CEILING_CONVENTIONS",
    "DEFAULT_CEILING_CONVENTION",
    "DEFAULT_SEED",
    "MAPPINGS",
    "ODD_REPETITIONS",
    "FitResult",
    "aggregate",
    "ceil_score",
    "cv_splits",
    "fit_per_bin",
    "fit_per_bin_sklearn",
    "pearson_r",
    "repetition_halves",
    "split_half_ceiling",
    "split_half_consistency",
]

MAPPINGS = ("pls", "ridge")
# How a correlation is put on the ceiling's scale (see the module docstring and :func:`ceil_score`).
CEILING_CONVENTIONS = ("r2/rho", "r/rho", "r/sqrt(rho)")
DEFAULT_CEILING_CONVENTION = "r2/rho"  # Brain-Score 2's NeuralBenchmark
# Brain-Score's splits use random_state=1 (metric_helpers.transformations.Split.Defaults): the same
# seed gives the same splits, so the same data give the same numbers.
DEFAULT_SEED = 1
# Odd repetition counts: "split" halves them 4/5 of 9 (Brain-Score), "drop" leaves one out (4/4).
ODD_REPETITIONS = ("split", "drop")

# sklearn PLSRegression's defaults (max_iter=500, tol=1e-06); the fast path must stop where it stops.
_PLS_MAX_ITER = 500
_PLS_TOL = 1e-06
_EPS = np.finfo(np.float64).eps
# Bytes of power-iteration matrices per chunk of bins: the iterations are chains of matrix-vector
# products that run at cache speed only while the matrices stay in cache; two chunks of 8 MiB (one
# per core) fit the 32 MiB L3 of the machine this was tuned on, and 16 MiB chunks measured slower.
_CHUNK_BYTES = 8 * 2**20


@dataclass
class FitResult:
    """Cross-validated fit of model features to neural responses, per time bin.

    Attributes:
        r: (bins, splits, sites) Pearson r between predicted and recorded responses on the test
            stimuli of each split (NaN where either is constant).
        score: (bins,) for each split the median of ``r`` over sites, then the mean over splits.
        ceiling: (bins,) split-half noise ceiling (:func:`split_half_ceiling`) when repetitions were
            given, else None.
        ceiled: (bins,) the score on the ceiling's scale under ``convention`` (:func:`ceil_score`),
            or None.
        convention: the ceiling convention of ``ceiled`` (one of :data:`CEILING_CONVENTIONS`), or None
            without a ceiling.
        predictions: (bins, splits, n_test, sites) predicted responses of the test stimuli.
        test_index: (splits, n_test) stimulus indices of each split's test set (row order of
            ``predictions``).
    """

    r: np.ndarray
    score: np.ndarray
    ceiling: np.ndarray | None = None
    ceiled: np.ndarray | None = None
    predictions: np.ndarray | None = None
    test_index: np.ndarray | None = None
    convention: str | None = None


# ----------------------------------------------------------------------------------------------
# Shared pieces (both paths use these, so any difference between them is in the mapping alone)
# ----------------------------------------------------------------------------------------------


def pearson_r(a: np.ndarray, b: np.ndarray, axis: int = -2) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` along ``axis`` (stimuli), vectorised over the rest.

    Returns NaN where either input is constant along ``axis``. "Constant" allows for round-off:
    a vector whose spread is below 1e-10 of its magnitude (e.g. a prediction equal to the intercept up
    to float noise) has no meaningful correlation, and counting it as constant keeps both paths'
    NaNs in the same places.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ac = a - a.mean(axis=axis, keepdims=True)
    bc = b - b.mean(axis=axis, keepdims=True)
    saa = (ac * ac).sum(axis=axis)
    sbb = (bc * bc).sum(axis=axis)
    sab = (ac * bc).sum(axis=axis)
    n = a.shape[axis]
    const = (saa <= (1e-10 * np.abs(a).max(axis=axis)) ** 2 * n) | (sbb <= (1e-10 * np.abs(b).max(axis=axis)) ** 2 * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sab / np.sqrt(saa * sbb)
    return np.where(const, np.nan, r)


def aggregate(r: np.ndarray) -> np.ndarray:
    """(bins, splits, sites) -> (bins,): per split the median over sites, then the mean over splits."""
    with warnings.catch_warnings():
        # An all-NaN split (every site constant) is NaN, not an error.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmedian(r, axis=2), axis=1)


def cv_splits(
    objects: np.ndarray, n_splits: int = 10, test_size: float = 0.1, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random train/test splits: ``(train (splits, n_train), test (splits, n_test))``.

    ``StratifiedShuffleSplit(n_splits, test_size=test_size, random_state=seed)`` on the object labels;
    every split has the same sizes, so the index arrays stack. With ``test_size=0.1`` the sizes equal
    Brain-Score's ``train_size=0.9`` (checked for every count up to 20,000), so with its seed (1, the
    default) and the stimuli in its order these are its splits.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    objects = np.asarray(objects)
    try:
        sss = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
        pairs = list(sss.split(np.zeros((len(objects), 1)), objects))
    except ValueError as e:  # sklearn's messages span lines; the contract is one line
        raise ValueError(
            f"objects/n_splits/test_size: no stratified split possible: {' '.join(str(e).split())}"
        ) from None
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def repetition_halves(
    n_reps: int, n_splits: int = 10, seed: int = DEFAULT_SEED, odd_repetitions: str = "split"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The random halves of ``n_reps`` repetitions the split-half ceiling averages: ``[(a, b), ...]``.

    ``"split"`` (Brain-Score's ``internal_consistency``): ``ShuffleSplit(n_splits, train_size=0.5,
    random_state=seed)`` over the repetitions (in the order of their ``repetition`` coordinate), so
    an odd count splits unevenly, 4 and 5 of 9. ``"drop"``: halves of ``n_reps // 2`` each, one
    repetition left out per split, so both halves are equally reliable, as the Spearman–Brown formula
    assumes (with 4/5 it slightly underestimates the reliability of the full average).
    """
    from sklearn.model_selection import ShuffleSplit

    if odd_repetitions not in ODD_REPETITIONS:
        raise ValueError(f"odd_repetitions must be one of {ODD_REPETITIONS}, got {odd_repetitions!r}")
    if n_splits < 1:
        raise ValueError(f"n_ceiling_splits must be >= 1, got {n_splits}")
    if n_reps < 2:
        raise ValueError(f"Y_reps needs at least 2 repetitions for a split-half ceiling, got {n_reps}")
    if odd_repetitions == "split":
        ss = ShuffleSplit(n_splits=n_splits, train_size=0.5, random_state=seed)
    else:
        half = n_reps // 2
        ss = ShuffleSplit(n_splits=n_splits, train_size=half, test_size=half, random_state=seed)
    return list(ss.split(np.zeros((n_reps, 1))))


def split_half_consistency(
    Y_reps: np.ndarray, n_splits: int = 10, seed: int = DEFAULT_SEED, odd_repetitions: str = "split"
) -> np.ndarray:
    """Spearman–Brown corrected split-half r per split, bin and site: ``(splits, bins, sites)``.

    For each split of :func:`repetition_halves`, each half's repetitions are averaged; per site, the
    Pearson r between the two half-averages across stimuli is corrected to the reliability of the
    full average, ``r' = 2r / (1 + r)`` (NaN for a site that is constant in a half).
    """
    Y_reps = np.asarray(Y_reps, dtype=np.float64)
    if Y_reps.ndim != 4:
        raise ValueError(f"Y_reps must be (reps, bins, stimuli, sites), got shape {Y_reps.shape}")
    _check_finite("Y_reps", Y_reps)
    per_split = []
    for a, b in repetition_halves(Y_reps.shape[0], n_splits, seed, odd_repetitions):
        r = pearson_r(Y_reps[a].mean(axis=0), Y_reps[b].mean(axis=0), axis=1)  # (bins, sites)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_split.append(2.0 * r / (1.0 + r))
    return np.stack(per_split)


def split_half_ceiling(
    Y_reps: np.ndarray, n_splits: int = 10, seed: int = DEFAULT_SEED, odd_repetitions: str = "split"
) -> np.ndarray:
    """Split-half noise ceiling per time bin, Spearman–Brown corrected (Brain-Score's ``internal_consistency``).

    Args:
        Y_reps: (reps, bins, stimuli, sites) single-repetition responses, repetitions in the order of
            their ``repetition`` coordinate (for Brain-Score's halves).
        n_splits: number of random half splits of the repetitions (the same halves for every bin).
        seed: ``random_state`` of the splits (Brain-Score's is 1).
        odd_repetitions: ``"split"`` (4/5 of 9, Brain-Score's) or ``"drop"`` (4/4); see
            :func:`repetition_halves`.

    Returns:
        (bins,) ceiling: per split the median over sites of :func:`split_half_consistency`, then the
        mean over splits (NaNs skipped).
    """
    per_split = split_half_consistency(Y_reps, n_splits, seed, odd_repetitions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmedian(per_split, axis=2), axis=0)


def ceil_score(score: np.ndarray, ceiling: np.ndarray, convention: str = DEFAULT_CEILING_CONVENTION) -> np.ndarray:
    """A raw score (aggregate Pearson r) on the scale of the noise ceiling (a split-half reliability ρ).

    ``"r2/rho"``: ``score**2 / ceiling`` (Brain-Score 2's ``explained_variance``); ``"r/rho"``:
    ``score / ceiling`` (Brain-Score 1, ``Kar2019-ost``); ``"r/sqrt(rho)"``: ``score / sqrt(ceiling)``.
    See the module docstring for what each means. The division is Brain-Score's, unguarded: a ceiling
    at or below 0 (no reliable signal) gives a meaningless number, as it does there.
    """
    if convention not in CEILING_CONVENTIONS:
        raise ValueError(f"ceiling_convention must be one of {CEILING_CONVENTIONS}, got {convention!r}")
    score = np.asarray(score, dtype=np.float64)
    ceiling = np.asarray(ceiling, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if convention == "r2/rho":
            return score**2 / ceiling
        if convention == "r/rho":
            return score / ceiling
        return score / np.sqrt(ceiling)


def _check_finite(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains NaN or inf ({int(bad.sum())} values, first at index {where})")


def _prepare(
    X: np.ndarray,
    Y: np.ndarray,
    objects: np.ndarray,
    mapping: str,
    n_components: int,
    alpha: float,
    n_splits: int,
    test_size: float,
    seed: int,
    Y_reps: np.ndarray | None,
    *,
    splits: tuple[np.ndarray, np.ndarray] | None = None,
    spantime: bool = False,
    ceiling_convention: str = DEFAULT_CEILING_CONVENTION,
    odd_repetitions: str = "split",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate the inputs (one-line ValueErrors naming the argument) and make the splits."""
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    if ceiling_convention not in CEILING_CONVENTIONS:
        raise ValueError(f"ceiling_convention must be one of {CEILING_CONVENTIONS}, got {ceiling_convention!r}")
    if odd_repetitions not in ODD_REPETITIONS:
        raise ValueError(f"odd_repetitions must be one of {ODD_REPETITIONS}, got {odd_repetitions!r}")
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 3:
        raise ValueError(f"Y must be (bins, stimuli, sites), got shape {Y.shape}")
    if X.ndim not in (2, 3):
        raise ValueError(f"X must be (bins, stimuli, features) or (stimuli, features), got shape {X.shape}")
    if X.shape[-2] != Y.shape[1]:
        raise ValueError(f"X has {X.shape[-2]} stimuli but Y has {Y.shape[1]}")
    if X.ndim == 3 and X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} time bins but Y has {Y.shape[0]}")
    if min(X.shape) == 0 or min(Y.shape) == 0:
        raise ValueError(f"X and Y must be non-empty, got shapes {X.shape} and {Y.shape}")
    _check_finite("X", X)
    _check_finite("Y", Y)
    objects = np.asarray(objects)
    if objects.shape != (Y.shape[1],):
        raise ValueError(f"objects must have one label per stimulus ({Y.shape[1]}), got shape {objects.shape}")
    if mapping == "ridge" and not alpha > 0:
        raise ValueError(f"alpha must be > 0 for ridge, got {alpha}")
    if Y_reps is not None:
        Y_reps = np.asarray(Y_reps)
        if Y_reps.ndim != 4 or Y_reps.shape[1:] != Y.shape:
            raise ValueError(
                f"Y_reps must be (reps, bins, stimuli, sites) = (reps, *{Y.shape}), got shape {Y_reps.shape}"
            )
    if splits is None:
        labels, counts = np.unique(objects, return_counts=True)
        if counts.min() < 2:
            raise ValueError(
                f"objects: object {labels[counts.argmin()].item()!r} has {counts.min()} stimulus; "
                "stratified splits need at least 2 stimuli per object"
            )
        train, test = cv_splits(objects, n_splits=n_splits, test_size=test_size, seed=seed)
    else:
        train, test = _check_splits(splits, Y.shape[1])
    if mapping == "pls":
        n_train = train.shape[1] * (Y.shape[0] if spantime else 1)
        bound = min(n_train, X.shape[-1])
        if not 1 <= n_components <= bound:
            raise ValueError(
                f"n_components must be in [1, min(n_train={n_train}, n_features={X.shape[-1]})], got {n_components}"
            )
    return X, Y, train, test


def _check_splits(splits: tuple[np.ndarray, np.ndarray], n_stimuli: int) -> tuple[np.ndarray, np.ndarray]:
    """Given ``(train, test)`` index arrays, (splits, n_train) and (splits, n_test), checked: each split
    must put every stimulus in exactly one of its two sets (as Brain-Score's and scikit-learn's do)."""
    try:
        train, test = (np.asarray(a) for a in splits)
    except (TypeError, ValueError):
        raise ValueError("splits: expected (train, test) index arrays") from None
    if train.ndim != 2 or test.ndim != 2 or train.shape[0] != test.shape[0] or train.shape[0] == 0:
        raise ValueError(
            f"splits: train and test must be (splits, n) arrays with the same number of splits, "
            f"got shapes {train.shape} and {test.shape}"
        )
    for name, idx in (("train", train), ("test", test)):
        if not np.issubdtype(idx.dtype, np.integer) or idx.size == 0 or idx.min() < 0 or idx.max() >= n_stimuli:
            raise ValueError(f"splits: {name} indices must be integers in [0, {n_stimuli})")
    # The fast path forms training sums as (all stimuli) - (test stimuli): every split must be a partition.
    for s in range(train.shape[0]):
        if (
            np.unique(np.concatenate([train[s], test[s]])).size != n_stimuli
            or train.shape[1] + test.shape[1] != n_stimuli
        ):
            raise ValueError(f"splits: split {s} is not a partition of the {n_stimuli} stimuli into train and test")
    return train, test


def _finish(
    r: np.ndarray,
    predictions: np.ndarray,
    test: np.ndarray,
    Y_reps: np.ndarray | None,
    n_ceiling_splits: int,
    seed: int,
    ceiling_convention: str,
    odd_repetitions: str,
) -> FitResult:
    score = aggregate(r)
    ceiling = ceiled = convention = None
    if Y_reps is not None:
        ceiling = split_half_ceiling(Y_reps, n_splits=n_ceiling_splits, seed=seed, odd_repetitions=odd_repetitions)
        ceiled, convention = ceil_score(score, ceiling, ceiling_convention), ceiling_convention
    return FitResult(
        r=r,
        score=score,
        ceiling=ceiling,
        ceiled=ceiled,
        predictions=predictions,
        test_index=test,
        convention=convention,
    )


def _estimator(mapping: str, n_components: int, alpha: float):
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.linear_model import Ridge

    return PLSRegression(n_components=n_components, scale=False) if mapping == "pls" else Ridge(alpha=alpha)


def _spantime(
    X: np.ndarray,
    Y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    mapping: str,
    n_components: int,
    alpha: float,
    out: np.ndarray,
) -> None:
    """One map per split, fitted on every bin's training stimuli stacked as samples, predicting each bin.

    Brain-Score's ``SpanTimeRegression``: the (bin, stimulus) pairs of the training stimuli are the
    samples (bins x n_train rows), so the weights are shared across time; predictions are per bin.
    One scikit-learn fit per split: the stacked fit is a single large problem, not many small ones.
    """
    n_bins = Y.shape[0]
    for s in range(train.shape[0]):
        xs = [X[b] if X.ndim == 3 else X for b in range(n_bins)]
        model = _estimator(mapping, n_components, alpha)
        model.fit(np.concatenate([x[train[s]] for x in xs]), np.concatenate([Y[b][train[s]] for b in range(n_bins)]))
        for b in range(n_bins):
            out[b, s] = model.predict(xs[b][test[s]]).reshape(test.shape[1], Y.shape[2])


# ----------------------------------------------------------------------------------------------
# Reference path: a plain loop calling scikit-learn
# ----------------------------------------------------------------------------------------------


def fit_per_bin_sklearn(
    X: np.ndarray,
    Y: np.ndarray,
    objects: np.ndarray,
    *,
    mapping: str = "pls",
    n_components: int = 25,
    alpha: float = 1.0,
    n_splits: int = 10,
    test_size: float = 0.1,
    seed: int = DEFAULT_SEED,
    Y_reps: np.ndarray | None = None,
    n_ceiling_splits: int = 10,
    spantime: bool = False,
    ceiling_convention: str = DEFAULT_CEILING_CONVENTION,
    odd_repetitions: str = "split",
    splits: tuple[np.ndarray, np.ndarray] | None = None,
) -> FitResult:
    """Reference implementation of :func:`fit_per_bin`: loop over bins and splits, fit scikit-learn.

    Same arguments, splits, scoring and result as :func:`fit_per_bin`; slow, kept as the ground truth
    the fast path is tested against.
    """
    opts = dict(
        splits=splits, spantime=spantime, ceiling_convention=ceiling_convention, odd_repetitions=odd_repetitions
    )
    X, Y, train, test = _prepare(X, Y, objects, mapping, n_components, alpha, n_splits, test_size, seed, Y_reps, **opts)
    n_bins, n_sites = Y.shape[0], Y.shape[2]
    pred = np.empty((n_bins, train.shape[0], test.shape[1], n_sites))
    if spantime:
        _spantime(X, Y, train, test, mapping, n_components, alpha, pred)
    else:
        for b in range(n_bins):
            Xb = X[b] if X.ndim == 3 else X
            for s in range(train.shape[0]):
                model = _estimator(mapping, n_components, alpha)
                model.fit(Xb[train[s]], Y[b][train[s]])
                pred[b, s] = model.predict(Xb[test[s]]).reshape(test.shape[1], n_sites)
    r = pearson_r(pred, Y[:, test], axis=-2)
    return _finish(r, pred, test, Y_reps, n_ceiling_splits, seed, ceiling_convention, odd_repetitions)


# ----------------------------------------------------------------------------------------------
# Fast path
# ----------------------------------------------------------------------------------------------


def fit_per_bin(
    X: np.ndarray,
    Y: np.ndarray,
    objects: np.ndarray,
    *,
    mapping: str = "pls",
    n_components: int = 25,
    alpha: float = 1.0,
    n_splits: int = 10,
    test_size: float = 0.1,
    seed: int = DEFAULT_SEED,
    Y_reps: np.ndarray | None = None,
    n_ceiling_splits: int = 10,
    spantime: bool = False,
    ceiling_convention: str = DEFAULT_CEILING_CONVENTION,
    odd_repetitions: str = "split",
    splits: tuple[np.ndarray, np.ndarray] | None = None,
) -> FitResult:
    """Cross-validated linear mapping from model features to neural responses, per time bin.

    Args:
        X: (bins, stimuli, features) model features per time bin, or (stimuli, features) used for
            every bin (the feedforward / "uniform" control).
        Y: (bins, stimuli, sites) trial-averaged responses per 10-ms bin.
        objects: (stimuli,) object label of each stimulus, for stratified splits (>= 2 per object).
        mapping: ``"pls"`` (``PLSRegression(n_components, scale=False)``) or ``"ridge"``
            (``Ridge(alpha)`` with intercept).
        n_components: PLS components; at most min(training samples, features).
        alpha: ridge penalty (> 0).
        n_splits: number of stratified random splits (the same for every bin).
        test_size: fraction of stimuli in each test set.
        seed: ``random_state`` of the splits and of the ceiling's half splits (1: Brain-Score's).
        Y_reps: optional (reps, bins, stimuli, sites) single-repetition responses for the noise
            ceiling (same bins, stimuli and sites as ``Y``).
        n_ceiling_splits: number of random half splits for the ceiling.
        spantime: one map per split across all bins (Brain-Score's ``spantime_pls``) instead of one
            per bin; fitted with scikit-learn in both paths.
        ceiling_convention: how ``ceiled`` is formed from the score and the ceiling, one of
            :data:`CEILING_CONVENTIONS` (default ``"r2/rho"``, Brain-Score 2's); see :func:`ceil_score`.
        odd_repetitions: ``"split"`` (4/5 of 9, Brain-Score's) or ``"drop"`` (4/4) for the ceiling.
        splits: ``(train, test)`` stimulus indices (splits, n) to use instead of drawing them
            (``n_splits``, ``test_size``, ``seed`` then only seed the ceiling).

    Returns:
        :class:`FitResult`: ``r`` (bins, splits, sites); ``score`` (bins,) = for each split the median
        of r over sites, then the mean over splits (Brain-Score's order); ``ceiling``, ``ceiled`` and
        ``convention`` when ``Y_reps`` is given; test-set ``predictions`` and ``test_index``.

    Gives the numbers of :func:`fit_per_bin_sklearn` (to 1e-6; see the module docstring for the
    algorithm and the degenerate cases), much faster.

    Raises:
        ValueError: one line naming the argument, for mismatched shapes, NaN/inf in X or Y, too many
            components, objects with fewer than 2 stimuli, or an unknown mapping or convention.
    """
    opts = dict(
        splits=splits, spantime=spantime, ceiling_convention=ceiling_convention, odd_repetitions=odd_repetitions
    )
    X, Y, train, test = _prepare(X, Y, objects, mapping, n_components, alpha, n_splits, test_size, seed, Y_reps, **opts)
    pred = np.empty((Y.shape[0], train.shape[0], test.shape[1], Y.shape[2]))
    if spantime:
        _spantime(X, Y, train, test, mapping, n_components, alpha, pred)
    elif mapping == "ridge":
        _ridge_fast(X, Y, train, test, alpha, pred)
    else:
        _pls_fast(X, Y, train, test, n_components, pred)
    r = pearson_r(pred, Y[:, test], axis=-2)
    return _finish(r, pred, test, Y_reps, n_ceiling_splits, seed, ceiling_convention, odd_repetitions)


def _n_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pls_fast(
    X: np.ndarray, Y: np.ndarray, train: np.ndarray, test: np.ndarray, n_components: int, out: np.ndarray
) -> None:
    """PLS predictions for every bin and split into ``out``: chunks of bins, chunks run on a thread pool.

    The power iterations are chains of small bandwidth-bound matrix-vector products with Python in
    between; NumPy releases the GIL inside them, so two chunks on two threads overlap one chunk's
    Python with the other's arithmetic. BLAS is held to one thread meanwhile so the workers do not
    oversubscribe the cores.
    """
    from threadpoolctl import threadpool_limits

    n_bins, _, n_sites = Y.shape
    n_splits = train.shape[0]
    d = min(X.shape[-1], n_sites)
    bins_per_chunk = max(1, _CHUNK_BYTES // (n_splits * d * d * 8))
    chunks = [range(s, min(s + bins_per_chunk, n_bins)) for s in range(0, n_bins, bins_per_chunk)]
    shared = _bin_features(X, train, test) if X.ndim == 2 else None

    def run(bins: range) -> int:
        feats = [shared] if shared is not None else [_bin_features(X[b], train, test) for b in bins]
        zx, delta, xte = (np.stack(f) for f in zip(*feats, strict=True))
        ys = [
            _bin_responses(feats[0 if shared is not None else i], X if shared is not None else X[b], Y[b], train, test)
            for i, b in enumerate(bins)
        ]
        c, ymean, colmax = (np.stack(f) for f in zip(*ys, strict=True))
        # sklearn zeroes sites that are constant (to 10 eps) over the training stimuli, then starts
        # the power iteration from the first site with any centred value above eps.
        c *= (colmax >= 10 * _EPS)[:, :, None, :]
        j0 = np.argmax(colmax > _EPS, axis=-1)
        out[bins.start : bins.stop], unconverged = _pls_chunk(zx, delta, xte, c, ymean, j0, train, n_components)
        return unconverged

    workers = min(_n_workers(), len(chunks))
    with threadpool_limits(limits=1 if workers > 1 else None):
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                n_unconverged = sum(pool.map(run, chunks))
        else:
            n_unconverged = sum(map(run, chunks))
    if n_unconverged:
        # sklearn warns once per component and fit; one summary is enough here.
        warnings.warn(
            f"PLS power iteration reached max_iter={_PLS_MAX_ITER} for {n_unconverged} components",
            ConvergenceWarning,
            stacklevel=3,
        )


def _bin_features(Xb: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of one bin in the frame the fast path works in.

    Returns ``zx`` (n, p): features centred on the all-stimulus mean; ``delta`` (S, p): each split's
    training mean in that frame (small, so ``zx - delta`` has no cancellation); ``xte`` (S, n_test, p):
    test features centred on the training mean, as sklearn's ``predict`` centres them. The training
    rows are never gathered: products with them are products with ``zx`` and a zero-padded vector.
    """
    zx = Xb - Xb.mean(axis=0)
    zte = zx[test]
    delta = (zx.sum(axis=0) - zte.sum(axis=1)) / train.shape[1]
    return zx, delta, zte - delta[:, None, :]


def _bin_responses(
    feats: tuple[np.ndarray, np.ndarray, np.ndarray],
    Xb: np.ndarray,
    Yb: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per split of one bin: centred training cross-products ``X_c^T Y_c`` (S, p, q), the training mean
    of Y (S, q) and each site's largest centred training value (S, q) (for sklearn's constant-site rule).
    """
    zx, dx, _ = feats
    zy = Yb - Yb.mean(axis=0)
    zy_te = zy[test]
    dy = (zy.sum(axis=0) - zy_te.sum(axis=1)) / train.shape[1]
    # Training X_c^T Y_c = (all stimuli) - (test stimuli) - n_train dx dy^T: the per-split cost scales
    # with the test set (10%) instead of the training set (90%).
    c = zx.T @ zy - np.matmul(zx[test].transpose(0, 2, 1), zy_te) - train.shape[1] * dx[:, :, None] * dy[:, None, :]
    ytr = Yb[train]
    ymean = ytr.mean(axis=1)
    # max |y - mean| = max(max y - mean, mean - min y): rounding is monotonic, so this equals
    # sklearn's elementwise test without forming the centred array.
    top, bottom = ytr.max(axis=1), ytr.min(axis=1)
    colmax = np.maximum(top - ymean, ymean - bottom)
    # A site that is exactly constant is constant, even where the rounding of its mean leaves more
    # than 10 eps (e.g. 7.3 repeated): sklearn then starts from a round-off vector (see the module
    # docstring); here it is zeroed like any other constant site.
    colmax[top == bottom] = 0.0
    return c, ymean, colmax


def _pls_chunk(
    zx: np.ndarray,
    delta: np.ndarray,
    xte: np.ndarray,
    c: np.ndarray,
    ymean: np.ndarray,
    j0: np.ndarray,
    train: np.ndarray,
    n_components: int,
) -> tuple[np.ndarray, int]:
    """sklearn's NIPALS PLSRegression (scale=False) for all (bin, split) items of a chunk of bins.

    Args:
        zx: (cbx, n, p) features centred on the all-stimulus mean (cbx = 1 when shared by all bins).
        delta: (cbx, S, p) training mean of each split in that frame.
        xte: (cbx, S, n_test, p) test features centred on the training mean.
        c: (cb, S, p, q) centred training cross-products X_c^T Y_c (constant sites zeroed).
        ymean: (cb, S, q) training means of Y (the intercept).
        j0: (cb, S) site whose column starts the power iteration.
        train: (S, n_train) training stimulus indices.

    Returns:
        (cb, S, n_test, q) predictions, and the number of components that hit max_iter.
    """
    cb, n_s, p, q = c.shape
    n = zx.shape[1]
    m = cb * n_s
    K = n_components
    split_ix = np.arange(n_s)[:, None]
    c = c.reshape(m, p, q)
    rows = np.arange(m)
    j0 = j0.reshape(m)
    q_space = q <= p
    # The power iteration's matrix: C^T C (sites x sites) or C C^T (features x features).
    gram = np.matmul(c.transpose(0, 2, 1), c) if q_space else np.matmul(c, c.transpose(0, 2, 1))
    W = np.zeros((m, p, K))
    P = np.zeros((m, p, K))
    Pa = np.zeros((m, p, K))  # a_k p_k: the deflated C_k is C_0 - Pa Q^T
    Q = np.zeros((m, q, K))
    T = np.zeros((cb, n_s, train.shape[1], K))
    t_full = np.zeros((cb, n, n_s))
    zx_t = zx.transpose(0, 2, 1)
    unconverged = 0
    for k in range(K):
        # C_k is never formed: products with it are C_0 v - Pa (Q^T v), which costs a rank-k
        # correction instead of a full (p, q) deflation per component.
        if q_space:
            start = j0
        else:
            start = c[rows, :, j0] - np.matmul(Pa[:, :, :k], Q[rows, j0, :k, None])[..., 0]
            start /= np.linalg.norm(start, axis=1, keepdims=True)
        final, hit_max = _power_iteration(gram, start, q_space)
        unconverged += hit_max
        if q_space:
            w = (
                np.matmul(c, final[:, :, None])[..., 0]
                - np.matmul(Pa[:, :, :k], np.matmul(final[:, None, :], Q[:, :, :k]).transpose(0, 2, 1))[..., 0]
            )
            w /= np.linalg.norm(w, axis=1, keepdims=True)
        else:
            w = final
        wb = w.reshape(cb, n_s, p)
        # Scores t = X_k w of the deflated training features: X_0 w from one GEMM per bin over all
        # stimuli (then the training rows), minus the earlier scores' part T_prev (P_prev^T w).
        t = np.matmul(zx, wb.transpose(0, 2, 1))[:, train, split_ix] - _dot(delta, wb)[..., None]
        if k:
            ptw = np.matmul(w[:, None, :], P[:, :, :k]).reshape(cb, n_s, k, 1)
            t -= np.matmul(T[..., :k], ptw)[..., 0]
        a = _dot(t, t)
        # Loadings p = X_k^T t / a = X_0^T t / a (t is orthogonal to the earlier scores), again as one
        # GEMM per bin with t scattered into the training rows.
        t_full[:, train, split_ix] = t
        xt = np.matmul(zx_t, t_full).transpose(0, 2, 1) - delta * t.sum(axis=-1)[..., None]
        p_k = (xt / a[..., None]).reshape(m, p)
        a = a.reshape(m)
        # Y loadings q = Y_k^T t / a = C_k^T w / a, and u = C_k^T p for the iteration-matrix update.
        wp = np.stack([w, p_k], axis=1)  # (m, 2, p)
        wq = np.matmul(wp, c) - np.matmul(np.matmul(wp, Pa[:, :, :k]), Q[:, :, :k].transpose(0, 2, 1))
        q_k = wq[:, 0] / a[:, None]
        # Deflating C_{k+1} = C_k - a p q^T changes the iteration matrix by a rank-2 update:
        # B_{k+1} = B_k - [q, u] [a u - a^2 (p.p) q, a q]^T  (C^T C),  or the transposed form (C C^T).
        if q_space:
            u = wq[:, 1]
            left = np.stack([q_k, u], axis=2)
            right = np.stack([a[:, None] * u - (a * a * _dot(p_k, p_k))[:, None] * q_k, a[:, None] * q_k], axis=1)
        else:
            rr = (
                np.matmul(c, q_k[:, :, None])[..., 0]
                - np.matmul(Pa[:, :, :k], np.matmul(q_k[:, None, :], Q[:, :, :k]).transpose(0, 2, 1))[..., 0]
            )
            left = np.stack([p_k, rr], axis=2)
            right = np.stack([a[:, None] * rr - (a * a * _dot(q_k, q_k))[:, None] * p_k, a[:, None] * p_k], axis=1)
        gram -= np.matmul(left, right)
        W[:, :, k] = w
        P[:, :, k] = p_k
        Pa[:, :, k] = a[:, None] * p_k
        Q[:, :, k] = q_k
        T[..., k] = t
    # sklearn: x_rotations = W pinv(P^T W) (scipy's pinv cut-off rtol = max(shape) * eps), coef = x_rotations Q^T.
    ptw = np.matmul(P.transpose(0, 2, 1), W)
    rot = np.matmul(W, np.linalg.pinv(ptw, K * _EPS))  # positional: `rcond` in NumPy 1.x, same meaning
    coef = np.matmul(rot, Q.transpose(0, 2, 1)).reshape(cb, n_s, p, q)
    return np.matmul(xte, coef) + ymean[:, :, None, :], unconverged


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products along the last axis (``np.vecdot`` where NumPy has it: a few µs less per call,
    which counts in the power iteration's loop)."""
    return _vecdot(a, b)


_vecdot = getattr(np, "vecdot", None) or (lambda a, b: np.einsum("...i,...i->...", a, b))


def _power_iteration(gram: np.ndarray, start: np.ndarray, q_space: bool) -> tuple[np.ndarray, int]:
    """sklearn's ``_get_first_singular_vectors_power_method`` (mode A) for every item at once.

    sklearn's x-weight iterates are ``x_1 ∝ C e_j0`` and ``x_{i+1} ∝ C C^T x_i``; it stops at the
    first ``||x_{i+1} - x_i||^2 < tol`` (never at i = 1, whose comparison is against the scalar 100),
    after one iterate when there is a single site, or after max_iter iterates.

    Args:
        gram: (m, d, d) ``C^T C`` (q_space) or ``C C^T``.
        start: q_space: (m,) the start site j0; otherwise (m, p) the unit first iterate ``x_1``.

    Returns:
        q_space: (m, q) the ``z`` with ``x_final = C z / ||C z||`` (``z_i = C^T x_i``, or ``e_j0`` for a
        single iterate); otherwise (m, p) ``x_final``. And the number of items that hit max_iter.
    """
    m, d, _ = gram.shape
    rows = np.arange(m)
    if q_space:
        # z_1 = C^T x_1 = B e_j0 / ||C e_j0|| = B e_j0 / sqrt(B_j0j0).
        cur = gram[rows, :, start] / np.sqrt(gram[rows, start, start])[:, None]
        final = np.zeros((m, d))
        final[rows, start] = 1.0
    else:
        cur = start
        final = start.copy()
    hit_max = 0
    if (q_space and d == 1) or _PLS_MAX_ITER == 1:  # a single site: sklearn stops after x_1
        return final, hit_max
    # ||x_{i+1} - x_i||^2 < tol  <=>  x_{i+1}.x_i > 1 - tol / 2 for unit vectors; the cosine is what
    # the q-space form gives directly. (Rounding differs from sklearn's only at ~1e-16.)
    cos_stop = 1.0 - _PLS_TOL / 2.0
    ids = rows  # items still iterating; `mats` and `cur` hold their rows only
    mats = gram
    for i in range(1, _PLS_MAX_ITER):
        mz = np.matmul(mats, cur[:, :, None])[:, :, 0]
        if q_space:
            # x_{i+1}.x_i = (z_i.z_i) / ||C z_i|| and ||C z_i||^2 = z_i^T B z_i.
            s = np.sqrt(_dot(cur, mz))
            stop = _dot(cur, cur) / s > cos_stop
            nxt = mz / s[:, None]
            cand = cur
        else:
            nxt = mz / np.sqrt(_dot(mz, mz))[:, None]
            stop = _dot(nxt, cur) > cos_stop
            cand = nxt
        if i == _PLS_MAX_ITER - 1:
            hit_max = int((~stop).sum())
            stop[:] = True
        if stop.any():
            final[ids[stop]] = cand[stop]
            keep = ~stop
            if not keep.any():
                break
            # Dropping finished items copies the remaining matrices once: cheap next to the hundreds
            # of products each of them still needs.
            mats, nxt, ids = mats[keep], nxt[keep], ids[keep]
        cur = nxt
    return final, hit_max


def _ridge_fast(
    X: np.ndarray, Y: np.ndarray, train: np.ndarray, test: np.ndarray, alpha: float, out: np.ndarray
) -> None:
    """sklearn's Ridge (cholesky solver, with intercept) for every bin and split, into ``out``.

    Primal ``(X^T X + alpha I)^{-1} X^T Y`` when features <= training stimuli, dual
    ``X^T (X X^T + alpha I)^{-1} Y`` otherwise (the form sklearn's cholesky solver picks). Predictions
    are ``(X_test A^{-1}) (X^T Y)``: the solve is for the test rows (10% of stimuli), not for every
    site. With shared features each split's solve is done once and reused for every bin.
    """
    n_tr, p = train.shape[1], X.shape[-1]
    primal = p <= n_tr
    shared = X.ndim == 2
    solved = None
    for b in range(Y.shape[0]):
        Xb = X if shared else X[b]
        if solved is None or not shared:
            feats = _bin_features(Xb, train, test)
            zx, delta, xte = feats
            if primal:
                # Training Gram matrix as (all stimuli) - (test stimuli) - shift, like the cross-products.
                zte = zx[test]
                gram = zx.T @ zx - np.matmul(zte.transpose(0, 2, 1), zte) - n_tr * delta[:, :, None] * delta[:, None, :]
                solved = np.stack([_solve_pos(g, alpha, e.T) for g, e in zip(gram, xte, strict=True)])
            else:
                xtr = zx[train] - delta[:, None, :]
                solved = np.stack([_solve_pos(a @ a.T, alpha, a @ e.T) for a, e in zip(xtr, xte, strict=True)])
        c, ymean, _ = _bin_responses(feats, Xb, Y[b], train, test)
        rhs = c if primal else Y[b][train] - ymean[:, None]
        out[b] = np.matmul(solved.transpose(0, 2, 1), rhs) + ymean[:, None]


def _solve_pos(a: np.ndarray, alpha: float, rhs: np.ndarray) -> np.ndarray:
    """``(a + alpha I)^{-1} rhs`` for symmetric positive definite ``a + alpha I`` (Cholesky)."""
    a = a.copy()
    a.flat[:: a.shape[0] + 1] += alpha
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, check_finite=False), rhs, check_finite=False)
