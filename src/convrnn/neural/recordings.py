"""Neural recordings in Brain-Score's temporal layout, loaded from NetCDF and checked.

The expected form is that of the public MajajHong2015 temporal assemblies: a ``DataArray`` with dims
``presentation x neuroid x time_bin`` where

* ``presentation`` has one row per *trial*: coordinates ``stimulus_id`` and ``object_name`` (and
  optionally ``repetition``); a stimulus shown several times has several rows;
* ``neuroid`` has ``neuroid_id`` and ``region`` (``V4``, ``IT``, ...);
* ``time_bin`` has ``time_bin_start`` / ``time_bin_end`` in ms (10-ms bins from 70 to 260 ms there).

:func:`load_recordings` turns that into arrays: the trial-averaged responses ``Y`` (bins, stimuli,
sites) for fitting and, when every stimulus was shown at least twice, the single-trial responses
``Y_reps`` (reps, bins, stimuli, sites) for the split-half noise ceiling. Stimuli shown a different
number of times keep their first ``min`` repetitions in ``Y_reps`` (the split-half estimate needs the
same count for all); ``Y`` averages every repetition.

Order, chosen so that the same data give Brain-Score's splits (they index the stimuli in order):

* **Stimuli** are in the order of Brain-Score's own averaged assembly. With repetitions that is the
  order ``average_repetition`` produces: sorted by the values of the presentation coordinates other
  than ``repetition``, compared as tuples in the order the coordinates appear (``stimulus_id`` first
  in a MultiIndex that starts with it; the first trial of a stimulus stands for it). An assembly with
  one row per stimulus (already averaged) keeps its own order, as Brain-Score's metric sees it.
* **Repetitions** in ``Y_reps`` are in the order of the ``repetition`` coordinate's sorted values when
  every stimulus has exactly one trial of each (Brain-Score's split-half ceiling draws its halves
  from those values); otherwise each stimulus' trials in file order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from convrnn.neural.assembly import DIMS, load_assembly

__all__ = ["Recordings", "RecordingsError", "load_recordings"]


class RecordingsError(ValueError):
    """Recordings that cannot be used as given; the message names the file, coordinate or value."""


@dataclass
class Recordings:
    """Trial-averaged (and single-trial) responses of one region, with their stimuli and bins."""

    stimulus_ids: np.ndarray  # (stimuli,) str
    objects: np.ndarray  # (stimuli,) object label per stimulus
    Y: np.ndarray  # (bins, stimuli, sites) mean over repetitions
    Y_reps: np.ndarray | None  # (reps, bins, stimuli, sites) or None when a stimulus has one trial
    bin_start: np.ndarray  # (bins,) ms
    bin_end: np.ndarray  # (bins,) ms
    neuroid_ids: np.ndarray  # (sites,)
    region: str | None
    source: str = "<array>"

    @property
    def n_reps(self) -> int:
        return 0 if self.Y_reps is None else self.Y_reps.shape[0]


def _coord(da: xr.DataArray, name: str, dim: str, source: str) -> np.ndarray:
    if name not in da.coords:
        raise RecordingsError(f"{source}: missing coordinate {name!r} on dim {dim!r}")
    c = da.coords[name]
    if c.dims != (dim,):
        raise RecordingsError(f"{source}: coordinate {name!r} must lie along {dim!r}, found dims {c.dims}")
    return np.asarray(c.values)


def _one_bin(da: xr.DataArray, source: str) -> xr.DataArray:
    """A single-bin assembly whose time bin was squeezed away (Brain-Score's static MajajHong2015:
    ``presentation x neuroid`` with a scalar ``time_bin`` (start, end) or scalar ``time_bin_start`` /
    ``time_bin_end``) as an assembly with one time bin; anything else as it is."""
    if set(da.dims) != {"presentation", "neuroid"}:
        return da
    scalar = {
        c: np.asarray(da.coords[c].values) for c in ("time_bin", "time_bin_start", "time_bin_end") if c in da.coords
    }
    if any(v.ndim for v in scalar.values()):
        return da  # not a squeezed bin: the dims check names the problem
    if "time_bin_start" in scalar and "time_bin_end" in scalar:
        start, end = scalar["time_bin_start"].item(), scalar["time_bin_end"].item()
    elif "time_bin" in scalar:
        try:
            start, end = scalar["time_bin"].tolist()
        except (TypeError, ValueError):
            raise RecordingsError(
                f"{source}: scalar time_bin {scalar['time_bin'].tolist()!r} is not a (start_ms, end_ms) pair"
            ) from None
    else:
        raise RecordingsError(
            f"{source}: dims ('presentation', 'neuroid') need a scalar time_bin (start, end) or scalar "
            "time_bin_start/time_bin_end coordinates to say which bin they are"
        )
    da = xr.DataArray(da).drop_vars(list(scalar))
    return da.expand_dims("time_bin", axis=-1).assign_coords(
        time_bin_start=("time_bin", [float(start)]), time_bin_end=("time_bin", [float(end)])
    )


def _presentation_coords(da: xr.DataArray) -> list[str]:
    """Names of the coordinates along ``presentation`` only, in the order Brain-Score walks them:
    coordinates in order, each MultiIndex expanded into its levels where it stands."""
    names: list[str] = []
    for name, coord in da.coords.items():
        if coord.dims != ("presentation",):
            continue
        index = da.indexes.get(name) if name == "presentation" else None
        levels = list(getattr(index, "names", None) or []) if index is not None and len(index.names) > 1 else []
        for n in levels or [str(name)]:
            if n not in names and n != "presentation":
                names.append(str(n))
    return names


def _repetition_slots(group: np.ndarray, counts: np.ndarray, repetition: np.ndarray | None) -> np.ndarray:
    """Each trial's repetition index: the rank of its ``repetition`` value when every stimulus has one
    trial of each value, else its position among its stimulus' trials in file order."""
    if repetition is not None:
        values, rank = np.unique(repetition, return_inverse=True)
        rank = rank.ravel()
        grid = np.zeros((len(counts), len(values)), dtype=np.int64)
        np.add.at(grid, (group, rank), 1)
        if (grid == 1).all():
            return rank
    trial_order = np.lexsort((np.arange(len(group)), group))  # by stimulus, then file order
    slot = np.empty(len(group), dtype=np.int64)
    starts_of = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot[trial_order] = np.arange(len(group)) - np.repeat(starts_of, counts)
    return slot


def load_recordings(data: str | Path | xr.DataArray, region: str | None = None) -> Recordings:
    """Load and check recordings; keep the sites of ``region`` (all sites when None).

    ``data``: a NetCDF file or an xarray assembly, ``presentation x neuroid x time_bin``, or
    ``presentation x neuroid`` with the one bin as scalar coordinates (a squeezed Brain-Score assembly).

    Raises :class:`RecordingsError` (one line naming the culprit) for missing dims or coordinates, NaN
    or infinite responses, an object name that changes between trials of one stimulus, bins that are not
    increasing, an unknown region, or no sites left.
    """
    source = str(data) if not isinstance(data, xr.DataArray) else "<array>"
    try:
        da = load_assembly(data) if not isinstance(data, xr.DataArray) else data
    except (FileNotFoundError, ValueError) as e:
        raise RecordingsError(str(e)) from None
    da = _one_bin(da, source)
    if set(da.dims) != set(DIMS):
        raise RecordingsError(f"{source}: dims must be {DIMS}, got {da.dims}")
    da = da.transpose(*DIMS)
    coord_order = _presentation_coords(da)
    # Plain coordinates: a pandas MultiIndex (as Brain-Score builds in memory) is flattened first.
    for dim in DIMS:
        if dim in da.indexes and len(getattr(da.indexes[dim], "names", [None])) > 1:
            da = da.reset_index(dim)
    stim = _coord(da, "stimulus_id", "presentation", source).astype(str)
    objects = _coord(da, "object_name", "presentation", source).astype(str)
    starts = _coord(da, "time_bin_start", "time_bin", source).astype(np.float64)
    ends = _coord(da, "time_bin_end", "time_bin", source).astype(np.float64)
    neuroid_ids = (
        np.asarray(da.coords["neuroid_id"].values).astype(str)
        if "neuroid_id" in da.coords
        else np.arange(da.sizes["neuroid"]).astype(str)
    )
    if region is not None:
        regions = _coord(da, "region", "neuroid", source).astype(str)
        keep = regions == region
        if not keep.any():
            raise RecordingsError(
                f"{source}: no sites of region {region!r} (regions: {', '.join(sorted(set(regions)))})"
            )
        da, neuroid_ids = da.isel(neuroid=np.flatnonzero(keep)), neuroid_ids[keep]
    if da.sizes["neuroid"] == 0 or da.sizes["presentation"] == 0 or da.sizes["time_bin"] == 0:
        raise RecordingsError(f"{source}: empty assembly, sizes {dict(da.sizes)}")
    if np.any(ends <= starts):
        i = int(np.argmax(ends <= starts))
        raise RecordingsError(f"{source}: time bin {i} ends ({ends[i]}) before it starts ({starts[i]})")
    if np.any(np.diff(starts) <= 0):
        raise RecordingsError(f"{source}: time_bin_start must increase, got {starts.tolist()}")
    sort_coords = [np.asarray(da.coords[c].values) for c in coord_order if c != "repetition" and c in da.coords]
    repetition = (
        np.asarray(da.coords["repetition"].values)
        if "repetition" in da.coords and da.coords["repetition"].dims == ("presentation",)
        else None
    )
    values = np.asarray(da.values, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        p, n, b = np.argwhere(bad)[0]
        raise RecordingsError(
            f"{source}: {int(bad.sum())} NaN/inf responses, first at stimulus {str(stim[p])!r}, "
            f"neuroid {str(neuroid_ids[n])!r}, bin {starts[b]:g}-{ends[b]:g} ms"
        )

    # Group trials by stimulus, keeping each stimulus' trials in file order (see the module docstring
    # for the order of the stimuli).
    ids, first, inverse, counts = np.unique(stim, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    if counts.max() > 1:
        # Brain-Score's average_repetition groups trials by every other presentation coordinate and
        # returns the groups sorted by those values as tuples: its splits index that order.
        keys = [tuple(np.asarray(col[first[i]]).tolist() for col in sort_coords) for i in range(len(ids))]
        with contextlib.suppress(TypeError):  # values of mixed, incomparable types: keep the file's order
            order = np.array(sorted(range(len(ids)), key=lambda i: keys[i]), dtype=np.int64)
    ids, counts = ids[order], counts[order]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    group = rank[inverse.ravel()]
    obj = np.empty(len(ids), dtype=object)
    for g, o in zip(group, objects):
        if obj[g] is None:
            obj[g] = o
        elif obj[g] != o:
            raise RecordingsError(f"{source}: stimulus {str(ids[g])!r} has object_name {str(obj[g])!r} and {str(o)!r}")
    sites = values.shape[1]
    Y = np.zeros((len(ids), sites, values.shape[2]))
    np.add.at(Y, group, values)
    Y /= counts[:, None, None]
    Y_reps = None
    n_rep = int(counts.min())
    if n_rep >= 2:
        slot = _repetition_slots(group, counts, repetition)
        use = slot < n_rep
        Y_reps = np.zeros((n_rep, len(ids), sites, values.shape[2]))
        Y_reps[slot[use], group[use]] = values[use]
        Y_reps = Y_reps.transpose(0, 3, 1, 2)  # (reps, bins, stimuli, sites)
    return Recordings(
        stimulus_ids=ids.astype(str),
        objects=obj.astype(str),
        Y=Y.transpose(2, 0, 1),
        Y_reps=Y_reps,
        bin_start=starts,
        bin_end=ends,
        neuroid_ids=neuroid_ids,
        region=region,
        source=source,
    )
