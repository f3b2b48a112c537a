"""Object solution times (OST): when, image by image, can a linear decoder read out the object?

The method of Kar et al. (2019), as Nayebi et al. (2022) apply it to ConvRNNs and IT, with the
d' and interpolation conventions of Brain-Score's ``Kar2019-ost`` metric
(``brainscore_vision/metrics/ost/metric.py`` with its ``i1`` metric).

Method
------
1. **Decoder per time bin** (:func:`image_dprimes`). For every bin separately, a linear SVM
   (``LinearSVC``, one-vs-rest over objects, features z-scored on the training images) is trained
   and tested with stratified k-fold cross-validation over images (``n_splits`` folds, stratified by
   object, shuffled with ``seed``; the same folds in every bin). Every image is thus classified once,
   by a decoder that never saw it. The SVM's one-vs-rest margins become object probabilities by
   Platt scaling: one sigmoid per object fitted on decision values the decoder had not been trained
   on (``CalibratedClassifierCV(method="sigmoid", cv=calibration_folds)`` inside each training
   fold), normalised over objects. Calibrated probabilities matter because the d' is compared with
   an absolute target (the primates' behavioural d'); raw margins have an arbitrary scale set by
   ``C``. Platt's targets are smoothed by the sample size (``(N+ + 1) / (N+ + 2)`` and
   ``1 / (N- + 2)``), so with few images per object the probabilities, and so the d', stay away from
   their extremes. ``calibration_folds=0`` skips the calibration and uses the logistic of the raw margins,
   normalised (scikit-learn's convention for one-vs-rest linear models).
2. **Per-image d'** (:func:`i1_dprimes`, Brain-Score's ``i1``, not normalised). For image *i* of
   object *t* and each other object *c*: the hit rate is the probability of choosing *t* in a
   two-way choice between *t* and *c*, ``p_t / (p_t + p_c)``; the false-alarm rate is the mean, over
   the images of object *c*, of the probability of choosing *t* over *c* for them. d' is
   ``z(hit) - z(false alarm)`` (z: the standard normal quantile), clipped to ``[-cap, cap]``
   (``cap = 5``; a rate of exactly 0 or 1 gives an infinite z, which the clip bounds), then averaged
   over the distractor objects *c* (NaNs skipped). The d' of an image mixes its own hit rate with
   object-level false-alarm rates, so it depends on how well the *other* images are decoded: an
   image at chance (hit rate 0.5) has ``d' = -z(false alarm)``, positive once the other objects are
   well separated. A target below that level counts chance images as solved.
3. **Solution time** (:func:`solution_times`). Per image, the first bin whose d' reaches the target
   (``d' >= target``) is the *hit* bin. The time is interpolated linearly between the hit bin and
   the sub-threshold bin before it with the highest d' (the earliest of equal maxima): the time
   where the straight line through those two (time, d') points crosses the target. Each bin is
   placed at its **start**. Both are Brain-Score's conventions; ``anchor="center"`` uses bin
   centres, and ``lower="previous"`` interpolates from the last finite bin before the hit instead
   of the highest one (a noisy early bump otherwise stretches the interpolation over several bins
   and pulls the time earlier). An image solved in its first finite bin gets that bin's time; an
   image that never reaches the target gets NaN. Bins with a NaN d' are skipped.
4. **Consistency** (:func:`ost_consistency`). Spearman's rank correlation between the model's and the
   recordings' OSTs over the images solved by both (finite in both), with that count.

Differences from Brain-Score's ``Kar2019-ost`` metric, and why
------------------------------------------------------------
Same: the i1 d' (hit rates, false-alarm rates, clip at 5, mean over distractors), the per-image
target d', the first bin reaching it, the interpolation from the highest sub-threshold bin before it
with bins at their start, Spearman's r. Different, each with its reason; where Brain-Score's choice is
a setting away it is an option (``docs/neural.md`` has the full table):

* **Decoder.** Brain-Score: a softmax layer (TensorFlow) trained by Adam for 40 epochs (learning rate
  1e-4, batch 64, weight decay 0.463 = 1 / (SVM C 1e-3 x 2,160 images), z-scored features). Here: a
  linear SVM (``LinearSVC``, one-vs-rest, z-scored, ``C=0.01``) with Platt-calibrated probabilities,
  because the papers (Kar et al. 2019; Nayebi et al. 2022) decode with a linear SVM, and because 40
  Adam epochs stop before convergence, so Brain-Score's probabilities depend on the optimiser's path
  and TensorFlow's. ``decoder="logistic"`` is the objective of Brain-Score's decoder (multinomial
  logistic regression, its L2 penalty) solved to convergence: the same model at its optimum, not the
  same iterate. scikit-learn's default ``C=1.0`` took about 5 times longer per bin on 1,320 images x
  168 features than 0.01.
* **Splits.** Brain-Score: 10 random 90/10 splits (``ShuffleSplit``, ``random_state=1``, not
  stratified): an image can be tested in several splits or in none. Here (``pooled``): stratified
  k-fold, so every image is held out exactly once and has exactly one OST.
* **False-alarm rates.** Brain-Score computes the i1 on each test split alone (about 10 % of the
  images, a dozen per object in Kar2019's 1,320), so each false-alarm rate rests on those few images.
  Here they rest on every image of the distractor object (all held out), a steadier estimate.
* **Aggregation.** Brain-Score: Spearman r over each split's solved test images, the mean over splits,
  divided by a ceiling of 0.79 (r/ρ). Here: one Spearman r over every image solved by both, with its
  p-value and image count; no ceiling (none can be estimated from the recordings' OSTs alone).
* ``ost_consistency_per_split`` (``convrnn ost --protocol per-split``) runs Brain-Score's protocol:
  its splits and seed, false-alarm rates from each test split, the mean of per-split r (raw, not
  divided by 0.79); with ``decoder="logistic"`` everything but the decoder's optimiser is Brain-Score's
  (tested against Brain-Score's own ``OSTCorrelation`` with that decoder in its place).
* Inputs are NumPy arrays ``(bins, images, features)``. A Brain-Score/xarray assembly with dims
  ``presentation x neuroid x time_bin`` converts with ``assembly.transpose("time_bin",
  "presentation", "neuroid").values``; ``time_bin_start`` / ``time_bin_end`` give the bins, and the
  object label per stimulus (e.g. ``object_name``) gives ``objects``. Recordings: average the
  repetitions first.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import norm, spearmanr

from convrnn.neural.fit import _check_finite, _n_workers

__all__ = [
    "DECODERS",
    "PROTOCOLS",
    "OSTResult",
    "OSTSplitResult",
    "SolutionTimes",
    "i1_dprimes",
    "image_dprimes",
    "object_solution_times",
    "ost_consistency",
    "ost_consistency_per_split",
    "solution_times",
]

ANCHORS = ("start", "center")
LOWERS = ("max", "previous")
DECODERS = ("svm", "logistic")
PROTOCOLS = ("pooled", "per-split")
# Brain-Score's TFProbabilitiesClassifier: fc_weight_decay = 1 / (C_svc * images) = 1 / (1e-3 * 2160).
BRAINSCORE_WEIGHT_DECAY = 0.463


@dataclass
class OSTResult:
    """Agreement of two sets of object solution times.

    Attributes:
        r: Spearman's rank correlation over the images solved by both (NaN when fewer than 3 such
            images or when either side is constant over them).
        n_images: number of images solved by both (finite OST in both).
        p: two-sided p-value of ``r`` (NaN with ``r``).
    """

    r: float
    n_images: int
    p: float


@dataclass
class SolutionTimes:
    """Object solution times of one system (a model or a set of recordings).

    Attributes:
        ost_ms: (images,) solution time per image in ms; NaN where the target is never reached.
        dprimes: (bins, images) cross-validated per-image d' in every bin.
        target_dprime: (images,) the d' each image had to reach.
        bin_starts_ms: (bins,) start of each time bin in ms.
        bin_ends_ms: (bins,) end of each time bin in ms.
        anchor: where a bin sits on the time axis for the interpolation (``"start"`` or ``"center"``).
        lower: the interpolation's lower point (``"max"`` or ``"previous"``; see :func:`solution_times`).
    """

    ost_ms: np.ndarray
    dprimes: np.ndarray
    target_dprime: np.ndarray
    bin_starts_ms: np.ndarray
    bin_ends_ms: np.ndarray
    anchor: str = "start"
    lower: str = "max"

    @property
    def solved(self) -> np.ndarray:
        """(images,) True where the image reached its target d'."""
        return np.isfinite(self.ost_ms)


# ----------------------------------------------------------------------------------------------
# d' per image
# ----------------------------------------------------------------------------------------------


def i1_dprimes(probabilities: np.ndarray, objects: np.ndarray, cap: float = 5.0) -> np.ndarray:
    """Per-image d' from choice probabilities (Brain-Score's ``i1``, not normalised).

    Args:
        probabilities: (images, objects) probability of each object for each image; column *k* is the
            *k*-th label of ``np.unique(objects)``.
        objects: (images,) true object label of each image; every object needs at least one image.
        cap: d' values are clipped to ``[-cap, cap]`` per distractor object, before the average.

    Returns:
        (images,) d' of each image: over distractor objects *c*, the mean of
        ``clip(z(p_t / (p_t + p_c)) - z(far[c, t]), -cap, cap)``, where *t* is the image's object and
        ``far[c, t]`` is the mean of ``p_t / (p_t + p_c)`` over the images of object *c*. NaN
        entries (0/0 probabilities, infinite minus infinite z) are skipped; an image with no finite
        entry gets NaN.
    """
    P = np.asarray(probabilities, dtype=np.float64)
    objects = np.asarray(objects)
    if objects.ndim != 1:
        raise ValueError(f"objects must be (images,), got shape {objects.shape}")
    labels, y = np.unique(objects, return_inverse=True)
    if P.shape != (len(objects), len(labels)):
        raise ValueError(
            f"probabilities must be (images, objects) = ({len(objects)}, {len(labels)}), got shape {P.shape}"
        )
    if len(labels) < 2:
        raise ValueError(f"objects: need at least 2 objects for a d', got {len(labels)}")
    n, k = P.shape
    p_true = P[np.arange(n), y]
    with np.errstate(divide="ignore", invalid="ignore"):
        # choose[i, c]: probability that image i is called c in a two-way choice between its own
        # object and c. For c == own object it is 0.5 and masked below.
        choose = P / (P + p_true[:, None])
    # far[a, c]: how often the images of object a are called c (mean over those images).
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    valid = np.isfinite(choose)
    counts = onehot.T @ valid
    with np.errstate(divide="ignore", invalid="ignore"):
        far = (onehot.T @ np.where(valid, choose, 0.0)) / counts
    hit = 1.0 - choose  # (images, distractor c): probability of choosing the true object over c
    false_alarm = far[:, y].T  # (images, c): far[c, t_i], images of c called the true object t_i
    with np.errstate(divide="ignore", invalid="ignore"):
        d = norm.ppf(hit) - norm.ppf(false_alarm)
    d = np.clip(d, -cap, cap)
    d[np.arange(n), y] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = np.isfinite(d)
        total = np.where(finite, d, 0.0).sum(axis=1)
        num = finite.sum(axis=1)
        return np.where(num > 0, total / np.maximum(num, 1), np.nan)


def _validate_features(
    features: np.ndarray, objects: np.ndarray, n_splits: int, calibration_folds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check the decoder's inputs (one-line errors naming the culprit); return float features and label indices."""
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"features must be (bins, images, features), got shape {X.shape}")
    if min(X.shape) == 0:
        raise ValueError(f"features must be non-empty, got shape {X.shape}")
    objects = np.asarray(objects)
    if objects.shape != (X.shape[1],):
        raise ValueError(f"objects must have one label per image ({X.shape[1]}), got shape {objects.shape}")
    _check_finite("features", X)
    labels, y, counts = np.unique(objects, return_inverse=True, return_counts=True)
    if len(labels) < 2:
        raise ValueError(f"objects: need at least 2 objects to decode, got {len(labels)} ({labels.tolist()})")
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    if counts.min() < n_splits:
        raise ValueError(
            f"objects: object {labels[counts.argmin()].item()!r} has {counts.min()} images, "
            f"fewer than n_splits={n_splits} (every fold needs one image of every object)"
        )
    if calibration_folds < 0 or calibration_folds == 1:
        raise ValueError(f"calibration_folds must be 0 (no calibration) or >= 2, got {calibration_folds}")
    # A training fold keeps at least count - ceil(count / n_splits) images of each object; the
    # calibration splits that again and needs one image of every object per inner fold.
    min_train = int((counts - np.ceil(counts / n_splits)).min())
    if calibration_folds and min_train < calibration_folds:
        raise ValueError(
            f"calibration_folds={calibration_folds} exceeds the {min_train} training images of object "
            f"{labels[(counts - np.ceil(counts / n_splits)).argmin()].item()!r} per fold; lower it or use more images"
        )
    return X, y


def image_dprimes(
    features: np.ndarray,
    objects: np.ndarray,
    *,
    n_splits: int = 10,
    seed: int = 0,
    C: float = 0.01,
    calibration_folds: int = 3,
    cap: float = 5.0,
    max_iter: int = 10_000,
    n_jobs: int | None = None,
    decoder: str = "svm",
    weight_decay: float = BRAINSCORE_WEIGHT_DECAY,
) -> np.ndarray:
    """Cross-validated per-image d' in every time bin, from a linear decoder per bin.

    Args:
        features: (bins, images, features) responses per time bin (model features or trial-averaged
            recordings).
        objects: (images,) object label of each image (at least 2 objects, each with at least
            ``n_splits`` images).
        n_splits: folds of the stratified k-fold cross-validation (the same folds in every bin).
        seed: seed of the fold assignment and of the SVM's coordinate descent.
        C: the SVM's inverse regularisation strength (features are z-scored first; see the module
            docstring for the default).
        calibration_folds: inner folds for the Platt scaling of the SVM margins (0: no calibration).
        cap: d' clip (see :func:`i1_dprimes`).
        max_iter: liblinear's iteration limit.
        n_jobs: bins fitted in parallel on threads (liblinear releases the GIL); default: the CPUs
            this process may use.
        decoder: ``"svm"`` (the papers' linear SVM, Platt-calibrated) or ``"logistic"`` (Brain-Score's
            softmax readout: multinomial logistic regression on z-scored features with its L2 penalty
            ``weight_decay``, solved to convergence; ``C`` and ``calibration_folds`` do not apply).
        weight_decay: the logistic decoder's penalty, as Brain-Score's ``fc_weight_decay`` (0.463).

    Returns:
        (bins, images) d' (see the module docstring for the method).

    Raises:
        ValueError: one line naming the culprit, for a shape mismatch, NaN/inf features, fewer than
            2 objects, an object with fewer images than ``n_splits``, or too many calibration folds.
    """
    from sklearn.model_selection import StratifiedKFold

    _check_decoder(decoder, weight_decay)
    X, y = _validate_features(features, objects, n_splits, calibration_folds if decoder == "svm" else 0)
    folds = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(X[0], y))
    n_objects = int(y.max()) + 1
    fit = _Decoder(decoder, C, calibration_folds, weight_decay, max_iter, seed, n_objects)

    def run(b: int) -> np.ndarray:
        P = np.empty((X.shape[1], n_objects))
        for train, test in folds:
            P[test] = fit(X[b, train], y[train], X[b, test])
        return i1_dprimes(P, y, cap=cap)

    return np.stack(_over_bins(run, X.shape[0], n_jobs))


def _over_bins(run, n_bins: int, n_jobs: int | None) -> list:
    """``[run(b) for b in range(n_bins)]`` on threads, BLAS held to one thread: the parallelism is across
    bins, and the per-fit matrices are small."""
    from threadpoolctl import threadpool_limits

    workers = max(1, min(n_jobs or _n_workers(), n_bins))
    with threadpool_limits(limits=1):
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(run, range(n_bins)))
        return [run(b) for b in range(n_bins)]


def _check_decoder(decoder: str, weight_decay: float) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "logistic" and not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0, got {weight_decay}")


@dataclass
class _Decoder:
    """Fits one decoder on a training set and gives (test images, objects) probabilities."""

    kind: str
    C: float
    calibration_folds: int
    weight_decay: float
    max_iter: int
    seed: int
    n_objects: int

    def __call__(self, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray) -> np.ndarray:
        if self.kind == "svm":
            return _fold_probabilities(
                X_train, y_train, X_test, self.C, self.calibration_folds, self.max_iter, self.seed
            )
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # Brain-Score's loss is mean cross-entropy + 0.5 * weight_decay * ||W||^2; scikit-learn's is
        # C * summed cross-entropy + 0.5 * ||W||^2: the same minimiser when C = 1 / (weight_decay * n).
        C = 1.0 / (self.weight_decay * len(y_train))
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=self.max_iter))
        model.fit(X_train, y_train)
        P = np.zeros((len(X_test), self.n_objects))
        P[:, model.classes_] = model.predict_proba(X_test)  # an object missing from training: probability 0
        return P


def _fold_probabilities(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    C: float,
    calibration_folds: int,
    max_iter: int,
    seed: int,
) -> np.ndarray:
    """(test images, objects) probabilities from a one-vs-rest linear SVM fitted on one training fold."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    svm = make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=max_iter, random_state=seed))
    if calibration_folds:
        # ensemble=False: margins for the sigmoids come from inner cross-validation, and one SVM
        # refitted on the whole training fold classifies the test images.
        model = CalibratedClassifierCV(svm, method="sigmoid", cv=calibration_folds, ensemble=False)
        model.fit(X_train, y_train)
        return model.predict_proba(X_test)
    svm.fit(X_train, y_train)
    margins = svm.decision_function(X_test)
    if margins.ndim == 1:  # two objects: one margin, for the second
        p = expit(margins)
        return np.stack([1.0 - p, p], axis=1)
    p = expit(margins)
    return p / p.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Solution times
# ----------------------------------------------------------------------------------------------


def _validate_bins(bin_starts_ms: np.ndarray, bin_ends_ms: np.ndarray, n_bins: int | None) -> tuple[np.ndarray, ...]:
    """Check the bins (finite, strictly increasing, each ending after it starts); return them as floats."""
    starts = np.asarray(bin_starts_ms, dtype=np.float64)
    ends = np.asarray(bin_ends_ms, dtype=np.float64)
    if starts.ndim != 1 or ends.shape != starts.shape:
        raise ValueError(
            f"bin_starts_ms and bin_ends_ms must be 1-D of equal length, got shapes {starts.shape} and {ends.shape}"
        )
    if n_bins is not None and len(starts) != n_bins:
        raise ValueError(f"bin_starts_ms has {len(starts)} bins but the d' array has {n_bins}")
    _check_finite("bin_starts_ms", starts)
    _check_finite("bin_ends_ms", ends)
    for name, t in (("bin_starts_ms", starts), ("bin_ends_ms", ends)):
        step = np.diff(t)
        if (step <= 0).any():
            i = int(np.argmax(step <= 0))
            raise ValueError(f"{name} must be strictly increasing: bin {i + 1} ({t[i + 1]}) follows {t[i]}")
    if (ends <= starts).any():
        i = int(np.argmax(ends <= starts))
        raise ValueError(f"bin_ends_ms: bin {i} ends at {ends[i]}, not after its start {starts[i]}")
    return starts, ends


def solution_times(
    dprimes: np.ndarray,
    target_dprime: float | np.ndarray,
    bin_starts_ms: np.ndarray,
    bin_ends_ms: np.ndarray,
    *,
    anchor: str = "start",
    lower: str = "max",
) -> np.ndarray:
    """Per-image time (ms) at which the d' first reaches its target, linearly interpolated.

    Args:
        dprimes: (bins, images) d' per bin and image (NaN entries are skipped).
        target_dprime: the d' to reach: a scalar, or (images,) one per image (e.g. the primates'
            behavioural d'); a NaN target gives a NaN time.
        bin_starts_ms: (bins,) bin starts, strictly increasing.
        bin_ends_ms: (bins,) bin ends, strictly increasing, each after its start.
        anchor: ``"start"`` (Brain-Score's) places each bin at its start; ``"center"`` at its middle.
        lower: the lower point of the interpolation: ``"max"`` (Brain-Score's), the sub-threshold
            bin before the hit with the highest d' (earliest of equal maxima); ``"previous"``, the
            last bin before the hit with a finite d'.

    Returns:
        (images,) solution time in ms; NaN where the target is never reached. The hit bin is the
        first with ``d' >= target``; the time is where the line through the lower point and the hit
        bin crosses the target; a hit with no finite bin before it gets the hit bin's time.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    if lower not in LOWERS:
        raise ValueError(f"lower must be one of {LOWERS}, got {lower!r}")
    dp = np.asarray(dprimes, dtype=np.float64)
    if dp.ndim != 2:
        raise ValueError(f"dprimes must be (bins, images), got shape {dp.shape}")
    starts, ends = _validate_bins(bin_starts_ms, bin_ends_ms, dp.shape[0])
    target = np.asarray(target_dprime, dtype=np.float64)
    if target.ndim == 0:
        target = np.full(dp.shape[1], float(target))
    if target.shape != (dp.shape[1],):
        raise ValueError(
            f"target_dprime must be a scalar or one value per image ({dp.shape[1]}), got shape {target.shape}"
        )
    times = starts if anchor == "start" else (starts + ends) / 2.0

    n_bins, n_images = dp.shape
    with np.errstate(invalid="ignore"):
        reached = dp >= target[None, :]  # NaN d' or NaN target: False
    solved = reached.any(axis=0)
    hit = np.argmax(reached, axis=0)  # first True (0 where none: masked by `solved`)
    cols = np.arange(n_images)
    # Candidates for the lower point: finite bins before the hit (all below the target by definition).
    before = (np.arange(n_bins)[:, None] < hit[None, :]) & np.isfinite(dp)
    has_low = before.any(axis=0)
    if lower == "max":
        low = np.argmax(np.where(before, dp, -np.inf), axis=0)  # first of equal maxima (Brain-Score's strict "<")
    else:
        low = np.where(before, np.arange(n_bins)[:, None], -1).max(axis=0).clip(min=0)
    d_hit, d_low = dp[hit, cols], dp[low, cols]
    t_hit, t_low = times[hit], times[low]
    with np.errstate(invalid="ignore", divide="ignore"):
        # d_hit >= target > d_low, so the slope is positive and the crossing lies in (t_low, t_hit].
        interp = t_low + (target - d_low) * (t_hit - t_low) / (d_hit - d_low)
    ost = np.where(has_low, interp, t_hit)
    return np.where(solved, ost, np.nan)


def object_solution_times(
    features: np.ndarray,
    objects: np.ndarray,
    target_dprime: float | np.ndarray,
    bin_starts_ms: np.ndarray,
    bin_ends_ms: np.ndarray,
    *,
    anchor: str = "start",
    lower: str = "max",
    n_splits: int = 10,
    seed: int = 0,
    C: float = 0.01,
    calibration_folds: int = 3,
    cap: float = 5.0,
    max_iter: int = 10_000,
    n_jobs: int | None = None,
    decoder: str = "svm",
    weight_decay: float = BRAINSCORE_WEIGHT_DECAY,
) -> SolutionTimes:
    """Object solution times from responses per time bin: :func:`image_dprimes` then :func:`solution_times`.

    Args:
        features: (bins, images, features) model features or trial-averaged recordings per bin.
        objects: (images,) object label per image.
        target_dprime: scalar or (images,) d' to reach (e.g. the primates' behavioural d' per image).
        bin_starts_ms, bin_ends_ms: (bins,) the bins' times in ms.
        anchor, lower, n_splits, seed, C, calibration_folds, cap, max_iter, n_jobs, decoder,
            weight_decay: see :func:`image_dprimes` and :func:`solution_times`.

    Returns:
        :class:`SolutionTimes` with the OSTs and the d' they came from.

    Raises:
        ValueError: one line naming the culprit (checked before any fitting).
    """
    n_bins = np.shape(features)[0] if np.ndim(features) == 3 else None
    starts, ends = _validate_bins(bin_starts_ms, bin_ends_ms, n_bins)
    n_images = np.shape(features)[1] if np.ndim(features) == 3 else None
    target = np.asarray(target_dprime, dtype=np.float64)
    if n_images is not None and target.ndim != 0 and target.shape != (n_images,):
        raise ValueError(
            f"target_dprime must be a scalar or one value per image ({n_images}), got shape {target.shape}"
        )
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    if lower not in LOWERS:
        raise ValueError(f"lower must be one of {LOWERS}, got {lower!r}")
    D = image_dprimes(
        features,
        objects,
        n_splits=n_splits,
        seed=seed,
        C=C,
        calibration_folds=calibration_folds,
        cap=cap,
        max_iter=max_iter,
        n_jobs=n_jobs,
        decoder=decoder,
        weight_decay=weight_decay,
    )
    ost = solution_times(D, target, starts, ends, anchor=anchor, lower=lower)
    return SolutionTimes(
        ost_ms=ost,
        dprimes=D,
        target_dprime=np.broadcast_to(target, (D.shape[1],)).copy(),
        bin_starts_ms=starts,
        bin_ends_ms=ends,
        anchor=anchor,
        lower=lower,
    )


# ----------------------------------------------------------------------------------------------
# Consistency
# ----------------------------------------------------------------------------------------------


def ost_consistency(model_ost: np.ndarray, neural_ost: np.ndarray) -> OSTResult:
    """Spearman correlation between two sets of OSTs over the images solved by both.

    Args:
        model_ost: (images,) the model's OSTs (NaN: never solved).
        neural_ost: (images,) the recordings' OSTs, same images in the same order.

    Returns:
        :class:`OSTResult` (r, n_images, p). With fewer than 3 common images, or OSTs constant over
        them, r and p are NaN (no rank correlation is defined).
    """
    a = np.asarray(model_ost, dtype=np.float64)
    b = np.asarray(neural_ost, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"model_ost and neural_ost must be 1-D, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"model_ost has {a.shape[0]} images but neural_ost has {b.shape[0]}")
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    a, b = a[both], b[both]
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return OSTResult(r=float("nan"), n_images=n, p=float("nan"))
    res = spearmanr(a, b)
    return OSTResult(r=float(res.statistic), n_images=n, p=float(res.pvalue))


# ----------------------------------------------------------------------------------------------
# Brain-Score's protocol: OSTs and their correlation per random 10 % test split
# ----------------------------------------------------------------------------------------------


def _split_dprimes(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, fit: _Decoder, cap: float, split: int, b: int
) -> np.ndarray:
    """d' of one split's test images in bin ``b``, from a decoder fitted on its training images."""
    try:
        P = fit(X[b, train], y[train], X[b, test])
    except ValueError as e:  # e.g. too few training images of an object for the calibration folds
        raise ValueError(f"split {split}: the decoder cannot be fitted: {' '.join(str(e).split())}") from None
    # d' uses only ratios of two objects' probabilities, so dropping the columns of objects absent
    # from the test set changes nothing for those present.
    return i1_dprimes(P[:, np.unique(y[test])], y[test], cap=cap)


@dataclass
class OSTSplitResult:
    """Agreement of a system's OSTs with reference OSTs, split by split (Brain-Score's ``Kar2019-ost``).

    Attributes:
        r: mean over splits of the per-split Spearman r (splits with a NaN r skipped; NaN if all are).
        split_r: (splits,) Spearman r over the test images of each split solved by both.
        n_images: (splits,) how many test images each split's r rests on.
        test_index: (splits, n_test) the images of each split's test set.
    """

    r: float
    split_r: np.ndarray
    n_images: np.ndarray
    test_index: np.ndarray


def ost_consistency_per_split(
    features: np.ndarray,
    objects: np.ndarray,
    target_dprime: float | np.ndarray,
    reference_ost: np.ndarray,
    bin_starts_ms: np.ndarray,
    bin_ends_ms: np.ndarray,
    *,
    n_splits: int = 10,
    test_size: float = 0.1,
    seed: int = 1,
    decoder: str = "svm",
    C: float = 0.01,
    calibration_folds: int = 3,
    weight_decay: float = BRAINSCORE_WEIGHT_DECAY,
    cap: float = 5.0,
    anchor: str = "start",
    lower: str = "max",
    max_iter: int = 10_000,
    n_jobs: int | None = None,
) -> OSTSplitResult:
    """A system's OSTs scored against ``reference_ost`` with Brain-Score's ``Kar2019-ost`` protocol.

    ``n_splits`` random splits of the images (``ShuffleSplit(test_size=0.1, random_state=1)``, not
    stratified: an image can be tested in several splits or none). In each split and bin a decoder is
    fitted on the training images and gives probabilities for the test images; the i1 d' of the test
    images uses false-alarm rates from the test images alone; their OSTs (:func:`solution_times`) are
    correlated (Spearman) with the reference OSTs of the same images; the score is the mean over
    splits. ``decoder="logistic"`` is Brain-Score's decoder's objective (see :func:`image_dprimes`).
    Brain-Score divides this mean by a ceiling of 0.79 (r/ρ); the raw mean is returned here.

    Args:
        features: (bins, images, features) the system's responses per bin.
        objects: (images,) object label per image.
        target_dprime: scalar or (images,) d' each image must reach.
        reference_ost: (images,) the OSTs to agree with (e.g. the recordings'; NaN: never solved).
        bin_starts_ms, bin_ends_ms: (bins,) the bins.
        the rest: as :func:`image_dprimes` and :func:`solution_times`; ``seed`` is the splits'
            ``random_state`` (Brain-Score's: 1).
    """
    from sklearn.model_selection import ShuffleSplit

    _check_decoder(decoder, weight_decay)
    X, y = _validate_features(features, objects, 2, 0)
    starts, ends = _validate_bins(bin_starts_ms, bin_ends_ms, X.shape[0])
    n = X.shape[1]
    target = np.broadcast_to(np.asarray(target_dprime, dtype=np.float64), (n,))
    ref = np.asarray(reference_ost, dtype=np.float64)
    if ref.shape != (n,):
        raise ValueError(f"reference_ost must have one value per image ({n}), got shape {ref.shape}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    if calibration_folds < 0 or calibration_folds == 1:
        raise ValueError(f"calibration_folds must be 0 (no calibration) or >= 2, got {calibration_folds}")
    try:
        splits = list(ShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed).split(X[0]))
    except ValueError as e:
        raise ValueError(f"n_splits/test_size: {' '.join(str(e).split())}") from None
    fit = _Decoder(decoder, C, calibration_folds, weight_decay, max_iter, seed, int(y.max()) + 1)
    split_r, counts = [], []
    for s, (train, test) in enumerate(splits):
        if len(np.unique(y[test])) < 2:
            raise ValueError(f"test_size: split {s} tests images of a single object; a d' needs two")
        D = np.stack(_over_bins(functools.partial(_split_dprimes, X, y, train, test, fit, cap, s), X.shape[0], n_jobs))
        c = ost_consistency(solution_times(D, target[test], starts, ends, anchor=anchor, lower=lower), ref[test])
        split_r.append(c.r)
        counts.append(c.n_images)
    split_r = np.array(split_r)
    r = float(np.nanmean(split_r)) if np.isfinite(split_r).any() else float("nan")
    return OSTSplitResult(r=r, split_r=split_r, n_images=np.array(counts), test_index=np.stack([t for _, t in splits]))
