"""Neural comparison: model features over time, recordings, per-10-ms-bin fits and scores, object solution times."""

from convrnn.neural.assembly import image_paths, load_assembly, model_features, save_assembly
from convrnn.neural.fit import (
    MAPPINGS,
    FitResult,
    aggregate,
    cv_splits,
    fit_per_bin,
    fit_per_bin_sklearn,
    pearson_r,
    split_half_ceiling,
)
from convrnn.neural.ost import (
    OSTResult,
    SolutionTimes,
    i1_dprimes,
    image_dprimes,
    object_solution_times,
    ost_consistency,
    solution_times,
)
from convrnn.neural.recordings import Recordings, RecordingsError, load_recordings
from convrnn.neural.score import ALIGNMENTS, Predictivity, bin_weights, feedforward_features, predictivity

__all__ = [
    "ALIGNMENTS",
    "MAPPINGS",
    "FitResult",
    "OSTResult",
    "Predictivity",
    "Recordings",
    "RecordingsError",
    "SolutionTimes",
    "aggregate",
    "bin_weights",
    "cv_splits",
    "feedforward_features",
    "fit_per_bin",
    "fit_per_bin_sklearn",
    "i1_dprimes",
    "image_dprimes",
    "image_paths",
    "load_assembly",
    "load_recordings",
    "model_features",
    "object_solution_times",
    "ost_consistency",
    "pearson_r",
    "predictivity",
    "save_assembly",
    "solution_times",
    "split_half_ceiling",
]
