"""Synthetic neural experiments with a known answer: recordings generated from a hidden model's features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

import convrnn
from convrnn.neural.assembly import model_features

N_OBJECTS, PER_OBJECT = 8, 12
BINS = np.arange(70.0, 260.0, 10.0)  # MajajHong2015's temporal bins: 70-80 ... 250-260 ms


def hidden_model() -> convrnn.ConvRNN:
    torch.manual_seed(0)
    return convrnn.create_model("rgc_shallow", num_classes=10, image_size=32, width=0.125).eval()


def make_recordings(
    features: xr.DataArray,
    objects: np.ndarray,
    *,
    delay_ms: float,
    sites: int = 24,
    reps: int = 6,
    sigma: float = 1.0,
    seed: int = 0,
) -> xr.DataArray:
    """Trials of "sites" that are random linear read-outs of the features ``delay_ms`` earlier, plus noise.

    Each site's noise-free response is standardised over stimuli, so its split-half reliability is known:
    the mean of ``reps`` trials has reliability ``1 / (1 + sigma^2 / reps)``.
    """
    rng = np.random.default_rng(seed)
    X = features.transpose("presentation", "neuroid", "time_bin").values.astype(np.float64)
    step_start = features.coords["time_bin_start"].values
    steps = np.searchsorted(step_start, BINS - delay_ms)
    W = rng.normal(size=(X.shape[1], sites))
    Y = np.stack([X[:, :, s] @ W for s in steps], axis=1)  # (stimuli, bins, sites)
    Y = (Y - Y.mean(0)) / Y.std(0)
    trials = Y[None] + sigma * rng.normal(size=(reps, *Y.shape))
    S = Y.shape[0]
    ids = features.coords["stimulus_id"].values.astype(str)
    return xr.DataArray(
        trials.reshape(reps * S, len(BINS), sites).transpose(0, 2, 1),
        dims=("presentation", "neuroid", "time_bin"),
        coords={
            "stimulus_id": ("presentation", np.tile(ids, reps)),
            "object_name": ("presentation", np.tile(np.asarray(objects).astype(str), reps)),
            "repetition": ("presentation", np.repeat(np.arange(reps), S)),
            "neuroid_id": ("neuroid", [f"site{i}" for i in range(sites)]),
            "region": ("neuroid", ["IT"] * sites),
            "time_bin_start": ("time_bin", BINS),
            "time_bin_end": ("time_bin", BINS + 10),
        },
        name="responses",
    )


@dataclass
class Experiment:
    model: convrnn.ConvRNN
    stimuli: Path  # folder of PNGs named <stimulus_id>.png
    objects: np.ndarray
    features: xr.DataArray  # the hidden model's IT features over 26 steps
    recordings: xr.DataArray
    delay_ms: float
    sigma: float
    reps: int


@pytest.fixture(scope="session")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    """96 images of 8 objects (a prototype each plus noise), recordings from the model's IT 20 ms later."""
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("stimuli")
    objects = np.repeat(np.arange(N_OBJECTS), PER_OBJECT)
    protos = rng.uniform(0, 255, size=(N_OBJECTS, 32, 32, 3))
    for i, o in enumerate(objects):
        img = np.clip(0.7 * protos[o] + 0.3 * rng.uniform(0, 255, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"im{i:03d}.png")
    model = hidden_model()
    feats = model_features(model, folder, areas=["IT"], times=26)
    delay, sigma, reps = 20.0, 1.0, 6
    rec = make_recordings(feats, objects, delay_ms=delay, sigma=sigma, reps=reps)
    return Experiment(model, folder, objects, feats, rec, delay, sigma, reps)
