"""Neural predictivity per time bin: align model steps with recording bins, fit, score, ceil.

Alignment of model time with recording time:

* **steps** (ConvRNNs): model step ``t`` stands for ``[t, t + 1) * step_ms + offset_ms`` after stimulus
  onset. A recording bin takes the model steps whose windows overlap it, weighted by the overlap (with
  10-ms bins and 10-ms steps this is one-to-one: bin 70-80 ms is step 7 at offset 0). A bin that no step
  overlaps is an error, not an extrapolation.
* **uniform** (feedforward control): one set of features, the same in every bin.
* **graded** (feedforward control): a sequence of layers, early to late, spread evenly over the bins;
  bin ``b`` of ``n`` uses layer ``floor(b * k / n)`` of ``k``, so early bins see early layers.

Without a feedforward model trained alongside, :func:`feedforward_features` gives the control from the
model itself: each layer's response at the step the stimulus first reaches it, i.e. the first
feedforward sweep, before any recurrent or feedback input carries stimulus information.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from convrnn.files import save_figure, write_text
from convrnn.model import ConvRNN
from convrnn.neural.assembly import model_features
from convrnn.neural.fit import (
    DEFAULT_CEILING_CONVENTION,
    DEFAULT_SEED,
    aggregate,
    ceil_score,
    fit_per_bin,
    split_half_ceiling,
)
from convrnn.neural.recordings import Recordings

__all__ = [
    "ALIGNMENTS",
    "Predictivity",
    "aligned_features",
    "bin_weights",
    "feedforward_features",
    "predictivity",
    "save_predictivity",
]

ALIGNMENTS = ("steps", "uniform", "graded")


@dataclass
class Predictivity:
    """Cross-validated predictivity of one feature set for one region, per recording bin."""

    name: str
    alignment: str
    bin_start: np.ndarray
    bin_end: np.ndarray
    score: np.ndarray  # (bins,) raw r: median over sites per split, mean over splits
    ceiling: np.ndarray | None  # (bins,) split-half, Spearman-Brown corrected
    ceiled: np.ndarray | None  # (bins,) the score on the ceiling's scale, under `convention`
    r: np.ndarray  # (bins, splits, sites)
    settings: dict[str, Any] = field(default_factory=dict)
    convention: str | None = None  # the ceiling convention of `ceiled` (convrnn.neural.fit.CEILING_CONVENTIONS)

    def to_dict(self) -> dict[str, Any]:
        def clean(a: np.ndarray | None) -> list[float | None] | None:
            return None if a is None else [None if not np.isfinite(v) else float(v) for v in a]

        return {
            "name": self.name,
            "alignment": self.alignment,
            "bin_start_ms": self.bin_start.tolist(),
            "bin_end_ms": self.bin_end.tolist(),
            "score": clean(self.score),  # raw r
            "ceiling": clean(self.ceiling),
            "ceiled": clean(self.ceiled),
            "ceiling_convention": self.convention,
            "settings": self.settings,
        }


def bin_weights(bin_start: np.ndarray, bin_end: np.ndarray, step_start: np.ndarray, step_end: np.ndarray) -> np.ndarray:
    """(bins, steps) weights: each bin's overlap with each step window, normalised to sum to 1."""
    lo = np.maximum(bin_start[:, None], step_start[None, :])
    hi = np.minimum(bin_end[:, None], step_end[None, :])
    w = np.clip(hi - lo, 0.0, None)
    total = w.sum(axis=1)
    if np.any(total <= 0):
        b = int(np.argmax(total <= 0))
        raise ValueError(
            f"time bins: bin {bin_start[b]:g}-{bin_end[b]:g} ms overlaps no model step "
            f"(the model covers {step_start.min():g}-{step_end.max():g} ms; unroll more steps or change offset_ms)"
        )
    return w / total[:, None]


def _stimulus_index(features: xr.DataArray, rec: Recordings) -> np.ndarray:
    ids = [str(s) for s in features.coords["stimulus_id"].values]
    where = {s: i for i, s in enumerate(ids)}
    missing = [str(s) for s in rec.stimulus_ids if s not in where]
    if missing:
        raise ValueError(
            f"stimulus_id: {len(missing)} of {len(rec.stimulus_ids)} recorded stimuli have no model features, "
            f"e.g. {missing[0]!r} (features have ids like {ids[0]!r})"
        )
    return np.array([where[s] for s in rec.stimulus_ids])


def _aligned(
    features: xr.DataArray, rec: Recordings, alignment: str, offset_ms: float, layers: Sequence[str] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups of (bin indices, X (bins_in_group, stimuli, features)) in the recordings' stimulus order."""
    idx = _stimulus_index(features, rec)
    data = np.asarray(features.transpose("presentation", "neuroid", "time_bin").values, dtype=np.float64)[idx]
    nb = len(rec.bin_start)
    if alignment == "steps":
        s0 = np.asarray(features.coords["time_bin_start"].values, dtype=np.float64) + offset_ms
        s1 = np.asarray(features.coords["time_bin_end"].values, dtype=np.float64) + offset_ms
        w = bin_weights(rec.bin_start, rec.bin_end, s0, s1)
        return [(np.arange(nb), np.einsum("bt,sft->bsf", w, data))]
    if alignment == "uniform":
        # Time-averaged if several steps are given: one feature set for every bin.
        x = data.mean(axis=2)
        return [(np.arange(nb), np.broadcast_to(x, (nb, *x.shape)))]
    if alignment == "graded":
        layer_of = np.asarray(features.coords["layer"].values).astype(str)
        order = list(dict.fromkeys(layer_of)) if layers is None else list(layers)
        for ly in order:
            if ly not in layer_of:
                raise ValueError(f"layers: {ly!r} is not among the features' layers {sorted(set(layer_of))}")
        k = len(order)
        which = (np.arange(nb) * k) // nb
        groups = []
        for j, ly in enumerate(order):
            bins = np.flatnonzero(which == j)
            if len(bins):
                x = data[:, layer_of == ly].mean(axis=2)
                groups.append((bins, np.broadcast_to(x, (len(bins), *x.shape))))
        return groups
    raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")


def aligned_features(
    features: xr.DataArray,
    recordings: Recordings,
    *,
    alignment: Literal["steps", "uniform", "graded"] = "steps",
    offset_ms: float = 0.0,
    layers: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The features each recording bin is compared with, in the recordings' stimulus order.

    Returns groups of ``(bin indices, X (bins_in_group, stimuli, features))``: one group for ``steps`` and
    ``uniform``, one per layer for ``graded`` (layers differ in size).
    """
    return _aligned(features, recordings, alignment, offset_ms, layers)


def predictivity(
    features: xr.DataArray,
    recordings: Recordings,
    *,
    alignment: Literal["steps", "uniform", "graded"] = "steps",
    offset_ms: float = 0.0,
    layers: Sequence[str] | None = None,
    mapping: str = "pls",
    n_components: int = 25,
    alpha: float = 1.0,
    n_splits: int = 10,
    test_size: float = 0.1,
    seed: int = DEFAULT_SEED,
    spantime: bool = False,
    ceiling_convention: str = DEFAULT_CEILING_CONVENTION,
    odd_repetitions: str = "split",
    name: str | None = None,
) -> Predictivity:
    """Fit ``features`` to ``recordings`` bin by bin and score them (see the module docstring).

    ``features`` is an assembly from :func:`~convrnn.neural.assembly.model_features` (or
    :func:`feedforward_features` for the controls). PLS uses ``min(n_components, features)``
    components; the number used is in ``settings``. ``seed``, ``spantime``, ``ceiling_convention``
    and ``odd_repetitions`` are :func:`~convrnn.neural.fit.fit_per_bin`'s; the defaults reproduce
    Brain-Score's ``pls`` metric, its ``internal_consistency`` ceiling and its ``NeuralBenchmark``'s
    ceiled score (r²/ρ) on the same data. With ``spantime`` and the ``graded`` control, one map is
    shared by the bins of each layer (layers differ in size).
    """
    groups = _aligned(features, recordings, alignment, offset_ms, layers)
    nb = len(recordings.bin_start)
    r_all: np.ndarray | None = None
    settings: dict[str, Any] = {
        "mapping": mapping,
        "n_splits": n_splits,
        "test_size": test_size,
        "seed": seed,
        "offset_ms": offset_ms,
        "alpha": alpha if mapping == "ridge" else None,
        "spantime": spantime,
        "odd_repetitions": odd_repetitions,
    }
    used = []
    for bins, X in groups:
        n_comp = min(n_components, X.shape[-1])
        used.append(n_comp)
        res = fit_per_bin(
            X,
            recordings.Y[bins],
            recordings.objects,
            mapping=mapping,
            n_components=n_comp,
            alpha=alpha,
            n_splits=n_splits,
            test_size=test_size,
            seed=seed,
            spantime=spantime,
            ceiling_convention=ceiling_convention,  # checked before the fit, applied below
            odd_repetitions=odd_repetitions,
        )
        if r_all is None:
            r_all = np.full((nb, *res.r.shape[1:]), np.nan)
        r_all[bins] = res.r
    assert r_all is not None
    settings["n_components"] = min(used) if mapping == "pls" else None
    score = aggregate(r_all)
    ceiling = ceiled = convention = None
    if recordings.Y_reps is not None:
        ceiling = split_half_ceiling(recordings.Y_reps, n_splits=n_splits, seed=seed, odd_repetitions=odd_repetitions)
        ceiled, convention = ceil_score(score, ceiling, ceiling_convention), ceiling_convention
    return Predictivity(
        name=name or str(features.attrs.get("model", "features")),
        alignment=alignment,
        bin_start=recordings.bin_start,
        bin_end=recordings.bin_end,
        score=score,
        ceiling=ceiling,
        ceiled=ceiled,
        r=r_all,
        settings=settings,
        convention=convention,
    )


def feedforward_features(
    model: ConvRNN,
    stimuli: Any,
    *,
    areas: Sequence[str],
    batch_size: int = 32,
    image_size: int | None = None,
    stimulus_ids: Sequence[str] | None = None,
    progress: bool = False,
) -> xr.DataArray:
    """Each layer of ``areas`` at the step the stimulus first reaches it: one time bin, layers by depth.

    Feeds :func:`predictivity` with ``alignment="uniform"`` (all layers, every bin) or ``"graded"``
    (layers spread over the bins, early to late).
    """
    first = model.first_stimulus_steps()
    layers = list(dict.fromkeys(ly for a in areas for ly in model.area_layers(a)))
    layers.sort(key=lambda ly: first[ly])
    steps = sorted({int(first[ly]) for ly in layers})
    full = model_features(
        model,
        stimuli,
        areas=layers,
        times=steps,
        presentation="neural",
        batch_size=batch_size,
        image_size=image_size,
        stimulus_ids=stimulus_ids,
        progress=progress,
    )
    parts = []
    for ly in layers:
        t = steps.index(int(first[ly]))
        part = full.isel(neuroid=np.flatnonzero(full.coords["layer"].values == ly), time_bin=[t])
        parts.append(part.drop_vars(["time_bin_start", "time_bin_end", "step"]))
    out = xr.concat(parts, dim="neuroid")
    out = out.assign_coords(time_bin_start=("time_bin", [np.nan]), time_bin_end=("time_bin", [np.nan]))
    out.attrs = {**full.attrs, "model": f"{model.spec.name} (feedforward sweep)"}
    return out


def save_predictivity(results: Sequence[Predictivity], out: str | Path, title: str = "") -> tuple[Path, Path]:
    """Write ``predictivity.json`` and ``predictivity.png`` (score vs bin) into ``out``, atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js = write_text(
        out / "predictivity.json", json.dumps({"title": title, "results": [r.to_dict() for r in results]}, indent=1)
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceiled = all(r.ceiled is not None for r in results)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in results:
        mid = (r.bin_start + r.bin_end) / 2
        ax.plot(mid, r.ceiled if ceiled else r.score, marker="o", ms=3, label=f"{r.name} [{r.alignment}]")
    ax.set_xlabel("time after stimulus onset (ms)")
    conventions = {r.convention for r in results}
    ax.set_ylabel(
        f"noise-corrected predictivity ({', '.join(sorted(conventions))})" if ceiled else "predictivity (median r)"
    )
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.legend(fontsize=7)
    return js, save_figure(fig, out / "predictivity.png")
