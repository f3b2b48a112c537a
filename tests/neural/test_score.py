"""The pipeline on recordings generated from a hidden model: it must find what was hidden."""

import numpy as np
import pytest

from convrnn.neural.recordings import load_recordings
from convrnn.neural.score import bin_weights, feedforward_features, predictivity


def test_ground_truth_recovered(experiment):
    rec = load_recordings(experiment.recordings, region="IT")
    analytic = 1 / (1 + experiment.sigma**2 / experiment.reps)
    true = predictivity(experiment.features, rec, offset_ms=experiment.delay_ms, n_components=10)
    # The noise ceiling is the reliability that the noise level implies.
    np.testing.assert_allclose(true.ceiling, analytic, atol=0.03)
    # The generating model at the right delay explains most of the explainable variance in every bin
    # (r^2/rho, the default convention; a 10-component PLS map from 86 training stimuli falls a little
    # short of the generating map), and the raw r is reported beside it.
    assert true.convention == "r2/rho" and true.to_dict()["ceiling_convention"] == "r2/rho"
    np.testing.assert_allclose(true.ceiled, true.score**2 / true.ceiling)
    assert np.nanmean(true.ceiled) > 0.8 and np.nanmin(true.ceiled) > 0.7
    # Stimuli shuffled against their features: no predictivity.
    rng = np.random.default_rng(0)
    ids = experiment.features.stimulus_id.values
    shuffled = experiment.features.assign_coords(stimulus_id=("presentation", ids[rng.permutation(len(ids))]))
    control = predictivity(shuffled, rec, offset_ms=experiment.delay_ms, n_components=10)
    assert abs(np.nanmean(control.ceiled)) < 0.15
    # The delay is recovered: the right offset scores best on average over bins.
    by_offset = {
        off: np.nanmean(predictivity(experiment.features, rec, offset_ms=off, n_components=10).ceiled)
        for off in (0.0, 10.0, 20.0, 30.0, 40.0)
    }
    assert max(by_offset, key=by_offset.get) == experiment.delay_ms


def test_feedforward_controls_score_below_the_recurrent_model(experiment):
    rec = load_recordings(experiment.recordings, region="IT")
    model = experiment.model
    uni = feedforward_features(model, experiment.stimuli, areas=["IT"])
    assert uni.sizes["time_bin"] == 1
    first = model.first_stimulus_steps()
    for layer in model.area_layers("IT"):  # each layer at the step the stimulus reaches it
        step = int(first[layer])
        np.testing.assert_allclose(
            uni.isel(time_bin=0, neuroid=uni.layer.values == layer).values,
            experiment.features.isel(time_bin=step, neuroid=experiment.features.layer.values == layer).values,
            rtol=1e-5,
            atol=1e-6,
        )
    true = predictivity(experiment.features, rec, offset_ms=experiment.delay_ms, n_components=10)
    u = predictivity(uni, rec, alignment="uniform", n_components=10)
    g = predictivity(
        feedforward_features(model, experiment.stimuli, areas=["V4", "IT"]), rec, alignment="graded", n_components=10
    )
    assert np.nanmean(u.ceiled) < np.nanmean(true.ceiled) - 0.1
    assert np.nanmean(g.ceiled) < np.nanmean(true.ceiled) - 0.1


def test_graded_spreads_layers_early_to_late(experiment):
    rec = load_recordings(experiment.recordings, region="IT")
    ff = feedforward_features(experiment.model, experiment.stimuli, areas=["V4", "IT"])
    layers = list(dict.fromkeys(ff.layer.values))
    assert layers == sorted(layers, key=lambda ly: experiment.model.first_stimulus_steps()[ly])
    # Two layers over 19 bins: bins 0-9 (b * 2 // 19 == 0) use the first, the rest the second; each bin's
    # score is then that layer's uniform score in the same bin.
    g = predictivity(ff, rec, alignment="graded", layers=layers[:2], n_components=5)
    which = np.arange(len(rec.bin_start)) * 2 // len(rec.bin_start)
    assert (which == 0).sum() == 10
    for j, layer in enumerate(layers[:2]):
        u = predictivity(ff.isel(neuroid=ff.layer.values == layer), rec, alignment="uniform", n_components=5)
        np.testing.assert_allclose(g.score[which == j], u.score[which == j])


def test_bin_weights_and_errors(experiment):
    w = bin_weights(np.array([70.0, 70.0]), np.array([80.0, 95.0]), np.arange(26) * 10.0, np.arange(1, 27) * 10.0)
    np.testing.assert_allclose(w[0, 7], 1.0)
    np.testing.assert_allclose(w[1, 7:10], [10 / 25, 10 / 25, 5 / 25])
    with pytest.raises(ValueError, match="bin 300-310 ms overlaps no model step"):
        bin_weights(np.array([300.0]), np.array([310.0]), np.arange(26) * 10.0, np.arange(1, 27) * 10.0)
    rec = load_recordings(experiment.recordings, region="IT")
    with pytest.raises(ValueError, match="overlaps no model step"):
        predictivity(experiment.features.isel(time_bin=slice(0, 10)), rec)
    missing = experiment.features.isel(presentation=slice(1, None))
    with pytest.raises(ValueError, match=r"stimulus_id: 1 of 96 recorded stimuli have no model features, e.g. 'im000'"):
        predictivity(missing, rec)
    with pytest.raises(ValueError, match="alignment must be one of"):
        predictivity(experiment.features, rec, alignment="diagonal")
