"""convrnn's neural fit, ceiling and ceiled score against Brain-Score's own metrics on the same data.

Synthetic recordings in Brain-Score's format (a trial-level ``NeuroidAssembly`` with ``stimulus_id``,
``object_name`` and ``repetition``; 9 repetitions, an odd count) and synthetic model features that
carry part of their signal. Brain-Score's side is exactly what its MajajHong2015 benchmarks run: the
``pls`` (and ``spantime_pls``) metric with ``stratification_coord='object_name'`` on the
repetition-averaged assembly (``average_repetition``), and the ``internal_consistency`` (and
``internal_consistency_temporal``) ceiling on the trial-level assembly. convrnn's side is
``load_recordings`` + ``fit_per_bin`` with their defaults.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("brainscore_vision", reason="brainscore-vision is not installed here (see `make test-brainscore`)")

from brainscore_core import Score
from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
from brainscore_vision import load_ceiling, load_metric
from brainscore_vision.benchmark_helpers.neural_common import average_repetition, explained_variance
from brainscore_vision.benchmarks import ceil_score as brainscore_ceil_score

from convrnn.neural import ceil_score, fit_per_bin, load_recordings, split_half_ceiling, split_half_consistency

N_OBJECTS, PER_OBJECT, REPS, SITES, FEATURES = 5, 12, 9, 12, 30
BINS = [(70, 80), (80, 90), (90, 100)]


def _data(seed: int = 0):
    """Features (stimuli, bins, features) and trials (trials, sites, bins), trials in shuffled order."""
    rng = np.random.default_rng(seed)
    n = N_OBJECTS * PER_OBJECT
    # Stimulus ids whose sorted order differs from the order of first appearance.
    ids = np.array([f"img{(7 * i) % n:03d}" for i in range(n)])
    objects = np.array([f"obj{i % N_OBJECTS}" for i in range(n)])
    X = rng.standard_normal((n, len(BINS), FEATURES))
    W = rng.standard_normal((FEATURES, SITES))
    signal = np.einsum("nbf,fs->nsb", X, W) / np.sqrt(FEATURES)
    trials = signal[None] + 2.0 * rng.standard_normal((REPS, n, SITES, len(BINS)))
    order = rng.permutation(REPS * n)  # trials interleaved, as recorded
    stim = np.tile(np.arange(n), REPS)[order]
    rep = np.repeat(np.arange(REPS), n)[order]
    return ids, objects, X, trials.reshape(REPS * n, SITES, len(BINS))[order], stim, rep


def _trial_assembly(ids, objects, values, stim, rep) -> NeuroidAssembly:
    return NeuroidAssembly(
        values,
        coords={
            "stimulus_id": ("presentation", ids[stim]),
            "object_name": ("presentation", objects[stim]),
            "repetition": ("presentation", rep),
            "neuroid_id": ("neuroid", [f"n{j:02d}" for j in range(values.shape[1])]),
            "region": ("neuroid", ["IT"] * values.shape[1]),
            "time_bin_start": ("time_bin", [b[0] for b in BINS]),
            "time_bin_end": ("time_bin", [b[1] for b in BINS]),
        },
        dims=["presentation", "neuroid", "time_bin"],
    )


def _source(ids, objects, X) -> NeuroidAssembly:
    """The model's side: features per stimulus (float64) with the stimulus coordinates Brain-Score aligns on."""
    return NeuroidAssembly(
        X.transpose(0, 2, 1),
        coords={
            "stimulus_id": ("presentation", ids),
            "object_name": ("presentation", objects),
            "neuroid_id": ("neuroid", [f"f{j:02d}" for j in range(X.shape[2])]),
            "time_bin_start": ("time_bin", [b[0] for b in BINS]),
            "time_bin_end": ("time_bin", [b[1] for b in BINS]),
        },
        dims=["presentation", "neuroid", "time_bin"],
    )


@pytest.fixture(scope="module")
def data():
    ids, objects, X, values, stim, rep = _data()
    trials = _trial_assembly(ids, objects, values, stim, rep)
    rec = load_recordings(trials, region="IT")
    index = {s: i for i, s in enumerate(ids)}
    X_rec = X[[index[s] for s in rec.stimulus_ids]].transpose(1, 0, 2)  # (bins, stimuli, features) in rec's order
    return ids, objects, X, trials, rec, X_rec


def test_recordings_in_brainscores_averaged_order(data) -> None:
    _, _, _, trials, rec, _ = data
    averaged = average_repetition(trials)
    assert list(rec.stimulus_ids) == list(averaged["stimulus_id"].values)
    assert list(rec.stimulus_ids) != list(dict.fromkeys(trials["stimulus_id"].values))  # not the file order
    by_id = averaged.transpose("presentation", "neuroid", "time_bin")
    np.testing.assert_allclose(rec.Y, by_id.values.transpose(2, 0, 1), rtol=0, atol=1e-12)
    # Another coordinate order gives another sort, Brain-Score's as well.
    reordered = NeuroidAssembly(
        trials.values,
        coords={
            "object_name": ("presentation", trials["object_name"].values),
            "repetition": ("presentation", trials["repetition"].values),
            "stimulus_id": ("presentation", trials["stimulus_id"].values),
            **{c: ("neuroid", trials[c].values) for c in ("neuroid_id", "region")},
            **{c: ("time_bin", trials[c].values) for c in ("time_bin_start", "time_bin_end")},
        },
        dims=["presentation", "neuroid", "time_bin"],
    )
    expected = list(average_repetition(reordered)["stimulus_id"].values)
    assert list(load_recordings(reordered).stimulus_ids) == expected != list(rec.stimulus_ids)


@pytest.mark.parametrize("b", range(len(BINS)))
def test_pls_per_site_and_aggregate_equal_brainscores(data, b: int) -> None:
    ids, objects, X, trials, rec, X_rec = data
    target = average_repetition(trials).isel(time_bin=b)  # one bin, squeezed: the static benchmarks' case
    source = _source(ids, objects, X).isel(time_bin=b)
    metric = load_metric("pls", crossvalidation_kwargs=dict(stratification_coord="object_name"))
    theirs = metric(source, target)
    ours = fit_per_bin(X_rec[b], rec.Y[b : b + 1], rec.objects)  # every setting at its default
    # Per site and split (Brain-Score's raw values are split x neuroid, neuroids sorted by id).
    raw = theirs.raw.transpose("split", "neuroid")
    assert list(raw["neuroid_id"].values) == list(rec.neuroid_ids)
    np.testing.assert_allclose(ours.r[0], raw.values, rtol=0, atol=1e-10)
    # The aggregate: median over sites per split, mean over splits.
    np.testing.assert_allclose(ours.score[0], float(theirs), rtol=0, atol=1e-10)
    # convrnn's former default seed (0) draws other splits: another number on the same data.
    assert abs(fit_per_bin(X_rec[b], rec.Y[b : b + 1], rec.objects, seed=0).score[0] - float(theirs)) > 1e-4


def test_ceiling_with_odd_repetitions_equals_internal_consistency(data) -> None:
    _, _, _, trials, rec, _ = data
    assert rec.n_reps == REPS and REPS % 2 == 1  # halves of 4 and 5
    ceiler = load_ceiling("internal_consistency")
    ours = split_half_ceiling(rec.Y_reps)
    per_site = split_half_consistency(rec.Y_reps)  # (splits, bins, sites)
    for b in range(len(BINS)):
        theirs = ceiler(trials.isel(time_bin=b))
        np.testing.assert_allclose(ours[b], float(theirs), rtol=0, atol=1e-10)
        raw = theirs.raw.transpose("split", "neuroid")
        np.testing.assert_allclose(per_site[:, b], raw.values, rtol=0, atol=1e-10)
    # Leaving one repetition out instead is a different number.
    assert not np.allclose(split_half_ceiling(rec.Y_reps, odd_repetitions="drop"), ours, atol=1e-6)


def test_ceiled_scores_are_brainscores_conventions(data) -> None:
    ids, objects, X, trials, rec, X_rec = data
    target = average_repetition(trials).isel(time_bin=0)
    raw = load_metric("pls", crossvalidation_kwargs=dict(stratification_coord="object_name"))(
        _source(ids, objects, X).isel(time_bin=0), target
    )
    ceiling = load_ceiling("internal_consistency")(trials.isel(time_bin=0))
    ours = fit_per_bin(X_rec[:1], rec.Y[:1], rec.objects, Y_reps=rec.Y_reps[:, :1])
    assert ours.convention == "r2/rho"
    # NeuralBenchmark's explained_variance (Brain-Score 2) is the default; Kar2019's ceil_score is r/rho.
    np.testing.assert_allclose(ours.ceiled[0], float(explained_variance(raw, ceiling)), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        ceil_score(ours.score, ours.ceiling, "r/rho")[0], float(brainscore_ceil_score(raw, ceiling)), rtol=0, atol=1e-10
    )
    # The same function on Brain-Score's own numbers gives Brain-Score's own ceiled values.
    for value in (0.3, -0.2, 0.9):
        for rho in (0.4, 0.95):
            np.testing.assert_allclose(
                ceil_score(np.array(value), np.array(rho)), float(explained_variance(Score(value), Score(rho)))
            )


def test_spantime_pls_and_temporal_ceiling_equal_brainscores(data) -> None:
    ids, objects, X, trials, rec, X_rec = data
    metric = load_metric("spantime_pls", crossvalidation_kwargs=dict(stratification_coord="object_name"))
    theirs = metric(_source(ids, objects, X), average_repetition(trials))
    ours = fit_per_bin(X_rec, rec.Y, rec.objects, spantime=True, Y_reps=rec.Y_reps)
    theirs = theirs.sortby("time_bin_start") if "time_bin" in theirs.dims else theirs
    np.testing.assert_allclose(ours.score, np.asarray(theirs.values, dtype=float), rtol=0, atol=1e-10)
    raw = theirs.raw.transpose("time_bin", "split", "neuroid")
    np.testing.assert_allclose(ours.r, raw.values, rtol=0, atol=1e-10)
    ceiling = load_ceiling("internal_consistency_temporal")(trials)
    np.testing.assert_allclose(ours.ceiling, np.asarray(ceiling.values, dtype=float), rtol=0, atol=1e-10)
    # The per-bin fits are another model: spantime is a setting, not the default.
    assert not np.allclose(fit_per_bin(X_rec, rec.Y, rec.objects).score, ours.score, atol=1e-3)
