"""Neural fits: cross-validated mappings from model features to neural recordings, per time bin."""

from convrnn.neural.fit import (
    MAPPINGS,
    FitResult,
    cv_splits,
    fit_per_bin,
    fit_per_bin_sklearn,
    pearson_r,
    split_half_ceiling,
)

__all__ = [
    "MAPPINGS",
    "FitResult",
    "cv_splits",
    "fit_per_bin",
    "fit_per_bin_sklearn",
    "pearson_r",
    "split_half_ceiling",
]
