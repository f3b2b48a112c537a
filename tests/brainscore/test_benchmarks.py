"""Brain-Score's own NeuralBenchmark scores a convrnn model end to end, offline, on synthetic recordings.

The benchmarks are built the way ``brainscore_vision.benchmarks.majajhong2015`` builds its IT-PLS
benchmarks (single bin 70-170 ms, the time bin squeezed away; and the temporal ones, 10-ms bins with
``spantime_pls``), over a synthetic assembly in Brain-Score's format instead of the downloaded one:
recordings generated from the scored model's own IT features plus noise, 7 repetitions.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("brainscore_vision", reason="brainscore-vision is not installed here (see `make test-brainscore`)")

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
from brainscore_vision import load_ceiling, load_metric
from brainscore_vision.benchmark_helpers.neural_common import (
    NeuralBenchmark,
    average_repetition,
    timebins_from_assembly,
)

from convrnn.brainscore import ConvRNNBrainModel, TimeBinError
from convrnn.neural import fit_per_bin, load_recordings

N_OBJECTS, PER_OBJECT, REPS, SITES = 5, 10, 7, 16
STATIC_BIN = (70, 170)  # MajajHong2015's single bin
TEMPORAL_BINS = [(70, 80), (80, 90), (100, 110), (260, 270)]  # the last one after the 26 neural steps
CV = dict(stratification_coord="object_name")  # the MajajHong2015 benchmarks' cross-validation


@pytest.fixture(scope="module")
def stimuli(tmp_path_factory: pytest.TempPathFactory) -> StimulusSet:
    """50 images of 5 objects (a prototype each plus noise), as a StimulusSet with files on disk."""
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("benchmark_stimuli")
    objects = np.repeat(np.arange(N_OBJECTS), PER_OBJECT)
    protos = rng.uniform(0, 255, size=(N_OBJECTS, 32, 32, 3))
    ids, paths = [], {}
    for i, o in enumerate(objects):
        img = np.clip(0.6 * protos[o] + 0.4 * rng.uniform(0, 255, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        path = folder / f"im{i:02d}.png"
        Image.fromarray(img).save(path)
        ids.append(f"im{(7 * i) % len(objects):02d}")  # ids whose sorted order is not the file order
        paths[ids[-1]] = path
    stimulus_set = StimulusSet({"stimulus_id": ids, "object_name": [f"obj{o}" for o in objects]})
    stimulus_set.stimulus_paths = paths
    stimulus_set.identifier = "convrnn-test.synthetic-objects"
    return stimulus_set


def _recordings(
    brain: ConvRNNBrainModel,
    stimuli: StimulusSet,
    bins: list[tuple[int, int]],
    labels: list[tuple[int, int]] | None = None,
) -> NeuroidAssembly:
    """Trials (presentation x neuroid x time_bin) of sites that read the model's IT out linearly, plus
    noise; the bins are labelled ``labels`` (default: ``bins``)."""
    rng = np.random.default_rng(2)
    brain.start_recording("IT", bins)
    feats = brain.look_at(stimuli).transpose("presentation", "neuroid", "time_bin").values.astype(np.float64)
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-6)
    signal = np.einsum("pnb,ns->psb", feats, rng.standard_normal((feats.shape[1], SITES))) / np.sqrt(feats.shape[1])
    signal /= signal.std(axis=0, keepdims=True)
    trials = signal[None] + 1.5 * rng.standard_normal((REPS, *signal.shape))
    n = len(stimuli)
    order = rng.permutation(REPS * n)
    stim = np.tile(np.arange(n), REPS)[order]
    assembly = NeuroidAssembly(
        trials.reshape(REPS * n, SITES, len(bins))[order],
        coords={
            "stimulus_id": ("presentation", stimuli["stimulus_id"].values[stim]),
            "object_name": ("presentation", stimuli["object_name"].values[stim]),
            "repetition": ("presentation", np.repeat(np.arange(REPS), n)[order]),
            "neuroid_id": ("neuroid", [f"site{j:02d}" for j in range(SITES)]),
            "region": ("neuroid", ["IT"] * SITES),
            "time_bin_start": ("time_bin", [b[0] for b in labels or bins]),
            "time_bin_end": ("time_bin", [b[1] for b in labels or bins]),
        },
        dims=["presentation", "neuroid", "time_bin"],
    )
    assembly.attrs["stimulus_set"] = stimuli
    assembly.attrs["stimulus_set_identifier"] = stimuli.identifier
    return assembly


def _benchmark(trials: NeuroidAssembly, metric: str, ceiler: str) -> NeuralBenchmark:
    """As ``majajhong2015._DicarloMajajHong2015Region`` builds it, over ``trials``."""
    averaged = average_repetition(trials)
    return NeuralBenchmark(
        identifier=f"convrnn-test.IT-{metric}",
        version=1,
        assembly=averaged,
        similarity_metric=load_metric(metric, crossvalidation_kwargs=CV),
        visual_degrees=8,
        number_of_trials=1,
        ceiling_func=lambda: load_ceiling(ceiler)(trials),
        parent="IT",
    )


def _features(brain: ConvRNNBrainModel, stimuli: StimulusSet, bins, order: np.ndarray) -> np.ndarray:
    """(bins, stimuli, features) of the model, stimuli in ``order`` (ids)."""
    brain.start_recording("IT", bins)
    rec = brain.look_at(stimuli).transpose("time_bin", "presentation", "neuroid")
    index = {s: i for i, s in enumerate(rec["stimulus_id"].values)}
    return rec.values.astype(np.float64)[:, [index[s] for s in order]]


def test_single_bin_neural_benchmark(model, stimuli: StimulusSet) -> None:
    brain = ConvRNNBrainModel(model, "tiny-rgc")
    trials = _recordings(brain, stimuli, [STATIC_BIN]).squeeze("time_bin")  # as MajajHong2015's load_assembly
    benchmark = _benchmark(trials, "pls", "internal_consistency")
    # What Brain-Score hands the model for a squeezed assembly: a list holding a 0-d object array.
    (passed,) = timebins_from_assembly(benchmark._assembly)
    assert isinstance(passed, np.ndarray) and passed.ndim == 0 and passed.dtype == object

    score = benchmark(brain)  # crashed with TimeBinError before (float() of the 0-d array)
    raw, ceiling = float(score.raw), float(score.ceiling)
    assert 0.3 < raw <= 1 and 0.5 < ceiling <= 1  # 25 PLS components on 45 stimuli: far from the ceiling
    np.testing.assert_allclose(float(score), raw**2 / ceiling, rtol=1e-12)  # Brain-Score 2: r^2 / rho

    # convrnn on the same data, every setting at its default: the same raw r, ceiling and ceiled score.
    rec = load_recordings(trials, region="IT")  # squeezed, as Brain-Score keeps it
    X = _features(brain, stimuli, [STATIC_BIN], rec.stimulus_ids)
    ours = fit_per_bin(X, rec.Y, rec.objects, Y_reps=rec.Y_reps)
    np.testing.assert_allclose(ours.ceiling[0], ceiling, rtol=0, atol=1e-10)
    # Features are float32 (as every Brain-Score model's); Brain-Score's PLS centres test features in
    # float32 while convrnn works in float64: r agrees to float32 precision.
    np.testing.assert_allclose(ours.score[0], raw, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.ceiled[0], float(score), rtol=0, atol=1e-4)


def test_temporal_neural_benchmark(model, stimuli: StimulusSet) -> None:
    brain = ConvRNNBrainModel(model, "tiny-rgc")
    trials = _recordings(brain, stimuli, TEMPORAL_BINS)
    benchmark = _benchmark(trials, "spantime_pls", "internal_consistency_temporal")
    passed = timebins_from_assembly(benchmark._assembly)  # an object array of (start, end) tuples
    assert passed.dtype == object and [tuple(b) for b in passed] == TEMPORAL_BINS

    score = benchmark(brain)
    raw = np.asarray(score.raw.values, dtype=float)
    ceiling = np.asarray(score.ceiling.values, dtype=float)
    assert raw.shape == ceiling.shape == (len(TEMPORAL_BINS),)
    np.testing.assert_allclose(np.asarray(score.values, dtype=float), raw**2 / ceiling, rtol=1e-12)
    assert raw.mean() > 0.3 and (raw > 0.1).all()  # one map shared by all bins fits the late bin worst

    rec = load_recordings(trials, region="IT")
    X = _features(brain, stimuli, TEMPORAL_BINS, rec.stimulus_ids)
    ours = fit_per_bin(X, rec.Y, rec.objects, Y_reps=rec.Y_reps, spantime=True)
    np.testing.assert_allclose(ours.ceiling, ceiling, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.score, raw, rtol=0, atol=1e-5)


def test_benchmark_refuses_bins_outside_an_explicit_window(model, stimuli: StimulusSet) -> None:
    late = _recordings(ConvRNNBrainModel(model), stimuli, [(240, 250)], labels=[(250, 270)]).squeeze("time_bin")
    brain = ConvRNNBrainModel(model, "tiny-rgc", times=26)  # run for 260 ms, and no longer
    with pytest.raises(TimeBinError, match=r"time_bins\[0\] = \(250, 270\) ms: outside the unrolled window"):
        _benchmark(late, "pls", "internal_consistency")(brain)
