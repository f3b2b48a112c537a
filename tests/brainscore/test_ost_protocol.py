"""``ost_consistency_per_split`` against Brain-Score's own ``Kar2019-ost`` metric (``OSTCorrelation``).

Brain-Score's metric decodes with ``TFProbabilitiesClassifier`` (TensorFlow, not installed here, and an
Adam iterate that no other implementation reproduces). Everything else of the metric runs as shipped
(its splits, the i1 d' per test split, the solution times, the per-split Spearman r and their mean)
with convrnn's ``decoder="logistic"`` (the same objective, solved to convergence) in the classifier's
place. Then convrnn's per-split protocol gives Brain-Score's numbers: what differs between the two
implementations is the decoder alone.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("brainscore_vision", reason="brainscore-vision is not installed here (see `make test-brainscore`)")

from brainscore_core.supported_data_standards.brainio.assemblies import (
    BehavioralAssembly,
    DataAssembly,
    NeuroidAssembly,
    array_is_element,
    walk_coords,
)
from brainscore_vision.metrics.ost import metric as ost_metric

from convrnn.neural.ost import BRAINSCORE_WEIGHT_DECAY, _Decoder, ost_consistency_per_split

N_OBJECTS, PER_OBJECT, BINS, FEATURES = 3, 40, 8, 10
STARTS = 70 + 10 * np.arange(BINS)


class LogisticProbabilities:
    """convrnn's logistic decoder behind the interface of Brain-Score's ``TFProbabilitiesClassifier``."""

    def fit(self, X, Y) -> None:
        self.labels = list(dict.fromkeys(Y.values))  # Brain-Score's labels_to_indices: first-seen order
        self.X, self.y = np.asarray(X.values, dtype=np.float64), np.array([self.labels.index(v) for v in Y.values])

    def predict_proba(self, X) -> BehavioralAssembly:
        decoder = _Decoder("logistic", 0.0, 0, BRAINSCORE_WEIGHT_DECAY, 10_000, 0, len(self.labels))
        P = decoder(self.X, self.y, np.asarray(X.values, dtype=np.float64))
        coords = {c: (dims, v) for c, dims, v in walk_coords(X) if array_is_element(dims, X.dims[0])}
        return BehavioralAssembly(P, coords={**coords, "choice": self.labels}, dims=[X.dims[0], "choice"])

    def close(self) -> None:
        pass


def _data(seed: int = 0):
    """Images whose object pattern switches on at an image-specific bin, plus noise; a target d' per image
    and reference OSTs (the onsets, with noise)."""
    rng = np.random.default_rng(seed)
    n = N_OBJECTS * PER_OBJECT
    objects = np.repeat(np.arange(N_OBJECTS), PER_OBJECT)
    onset = rng.integers(1, BINS - 2, size=n)
    pattern = rng.standard_normal((N_OBJECTS, FEATURES))
    X = rng.standard_normal((BINS, n, FEATURES))
    X += 2.5 * (np.arange(BINS)[:, None, None] >= onset[None, :, None]) * pattern[objects][None]
    target = rng.uniform(0.8, 1.4, size=n)
    reference = STARTS[onset] + rng.normal(0, 5, size=n)
    return X, objects, target, reference


def test_per_split_protocol_equals_brainscores_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    X, objects, target, reference = _data()
    ids = np.array([f"img{i:03d}" for i in range(len(objects))])
    labels = np.array([f"obj{o}" for o in objects])
    source = NeuroidAssembly(
        X.transpose(1, 2, 0),
        coords={
            "stimulus_id": ("presentation", ids),
            "image_label": ("presentation", labels),
            "truth": ("presentation", labels),
            "neuroid_id": ("neuroid", [f"f{j}" for j in range(FEATURES)]),
            "time_bin_start": ("time_bin", STARTS),
            "time_bin_end": ("time_bin", STARTS + 10),
        },
        dims=["presentation", "neuroid", "time_bin"],
    )
    target_osts = DataAssembly(
        reference,
        coords={"stimulus_id": ("presentation", ids), "i1": ("presentation", target)},
        dims=["presentation"],
    )
    monkeypatch.setattr(ost_metric, "TFProbabilitiesClassifier", LogisticProbabilities)
    theirs = ost_metric.OSTCorrelation()(source, target_osts)

    ours = ost_consistency_per_split(X, objects, target, reference, STARTS, STARTS + 10, decoder="logistic")
    for test in ours.test_index:  # Brain-Score's i1 needs every object in every test split
        assert len(np.unique(objects[test])) == N_OBJECTS
    split_r = np.asarray(theirs.raw.values, dtype=float)
    assert np.isfinite(split_r).sum() >= 8 and ours.n_images.min() >= 3
    np.testing.assert_allclose(ours.split_r, split_r, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.r, float(theirs), rtol=0, atol=1e-9)
    assert ours.r > 0.5
