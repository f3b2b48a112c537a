"""Model features over time as xarray assemblies in Brain-Score's layout, saved as NetCDF.

An assembly is an ``xarray.DataArray`` with dims ``presentation x neuroid x time_bin``:

* ``presentation``: one row per stimulus, coordinate ``stimulus_id`` (for image files, the file name
  without its suffix; plus ``image_file_name``).
* ``neuroid``: one column per unit, coordinates ``neuroid_id`` (``"<layer>.<index>"``), ``layer`` and
  ``region`` (the area asked for, e.g. ``IT``).
* ``time_bin``: one per model step, coordinates ``time_bin_start`` / ``time_bin_end`` in ms after
  stimulus onset (step ``t`` stands for ``[t, t + 1) * step_ms``, 10 ms in the zoo).

Coordinates are plain (no pandas MultiIndex) so the file round-trips through NetCDF unchanged, the way
Brain-Score's BrainIO stores its assemblies.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from convrnn.data.images import IMAGE_SUFFIXES, ImageError, eval_transform, load_image
from convrnn.data.presentation import NEURAL_TIMES
from convrnn.model import ConvRNN

__all__ = ["DIMS", "image_paths", "load_assembly", "model_features", "save_assembly"]

DIMS = ("presentation", "neuroid", "time_bin")


def image_paths(stimuli: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files from a folder (sorted by name, non-recursive) or a list of files."""
    if isinstance(stimuli, (str, Path)):
        root = Path(stimuli)
        if not root.is_dir():
            raise ImageError(f"stimuli: {str(root)!r} is not a folder of images")
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise ImageError(f"stimuli: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(root)!r}")
        return paths
    return [Path(p) for p in stimuli]


def _batches(
    stimuli: str | Path | Sequence[str | Path] | Tensor | np.ndarray,
    image_size: int,
    batch_size: int,
    stimulus_ids: Sequence[str] | None,
) -> tuple[list[str], list[str] | None, object]:
    """Stimulus ids, file names (or None) and a generator of normalised image batches."""
    if isinstance(stimuli, (Tensor, np.ndarray)):
        x = torch.as_tensor(np.asarray(stimuli) if isinstance(stimuli, np.ndarray) else stimuli, dtype=torch.float32)
        if x.dim() != 4:
            raise ValueError(f"stimuli: an array of images must be (N, C, H, W), got shape {tuple(x.shape)}")
        ids = [str(i) for i in range(len(x))] if stimulus_ids is None else [str(s) for s in stimulus_ids]
        files = None
        gen = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
        n = len(x)
    else:
        paths = image_paths(stimuli)
        ids = [p.stem for p in paths] if stimulus_ids is None else [str(s) for s in stimulus_ids]
        files = [p.name for p in paths]
        tf = eval_transform(image_size)
        gen = (
            torch.stack([tf(load_image(p)) for p in paths[i : i + batch_size]])
            for i in range(0, len(paths), batch_size)
        )
        n = len(paths)
    if len(ids) != n:
        raise ValueError(f"stimulus_ids: {len(ids)} ids for {n} stimuli")
    if len(set(ids)) != len(ids):
        dup = next(s for s in ids if ids.count(s) > 1)
        raise ValueError(f"stimulus_ids: {dup!r} occurs more than once")
    return ids, files, gen


@torch.no_grad()
def model_features(
    model: ConvRNN,
    stimuli: str | Path | Sequence[str | Path] | Tensor | np.ndarray,
    *,
    areas: Sequence[str] = ("IT",),
    times: int | Sequence[int] = NEURAL_TIMES,
    presentation: str = "neural",
    batch_size: int = 32,
    image_size: int | None = None,
    stimulus_ids: Sequence[str] | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> xr.DataArray:
    """Features of ``areas`` at every requested step for every stimulus, as an assembly.

    Args:
        model: any ConvRNN (zoo, trained, searched, converted).
        stimuli: a folder of images, a list of image files, or normalised images (N, C, H, W).
        areas: layers or area aliases (``V4``, ``pIT``, ``cIT-aIT``, ``IT``); their units are concatenated
            along ``neuroid`` with a ``region`` coordinate naming the area.
        times: the number of steps to unroll (every step is returned) or the steps to return.
        presentation: how the image is shown over time; ``neural`` is the monkey protocol (26 steps, image
            off after step 10).
        batch_size: images per forward pass.
        image_size: size images are resized/cropped to (default: the model's).
        stimulus_ids: ids of the stimuli (default: file stems, or indices for arrays).
        progress: show a progress bar.
        device: where to run the model (default: where its parameters are).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    size = image_size or model.spec.image_size
    steps = list(range(times)) if isinstance(times, int) else sorted(set(int(t) for t in times))
    if not steps or steps[0] < 0:
        raise ValueError(f"times: need at least one step >= 0, got {times!r}")
    areas = list(areas)
    layer_sets = {a: model.area_layers(a) for a in areas}
    ids, files, gen = _batches(stimuli, size, batch_size, stimulus_ids)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ids), unit="img", desc="features", disable=None)
    try:
        for x in gen:
            feats = model.features(x.to(dev), areas=areas, times=steps, presentation=presentation)
            # (B, neuroid, time_bin): areas concatenated in the order asked.
            per_step = [torch.cat([feats[a][t].flatten(1) for a in areas], dim=1) for t in steps]
            chunks.append(torch.stack(per_step, dim=2).float().cpu().numpy())
            if bar is not None:
                bar.update(len(x))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    data = np.concatenate(chunks, axis=0)
    # Unit bookkeeping from one image's shapes: layer names and sizes in concatenation order.
    layer_names: list[str] = []
    regions: list[str] = []
    unit_index: list[np.ndarray] = []
    sizes = _unit_counts(model, layer_sets, size)
    for area in areas:
        for layer in layer_sets[area]:
            n = sizes[layer]
            layer_names += [layer] * n
            regions += [area] * n
            unit_index.append(np.arange(n))
    if len(layer_names) != data.shape[1]:  # the plan and the run disagree: a bug, not bad input
        raise RuntimeError(f"feature count {data.shape[1]} != planned {len(layer_names)}")
    idx = np.concatenate(unit_index)
    starts = np.array([model.step_window_ms(t)[0] for t in steps], dtype=np.float64)
    ends = np.array([model.step_window_ms(t)[1] for t in steps], dtype=np.float64)
    coords: dict[str, tuple[str, object]] = {
        "stimulus_id": ("presentation", np.array(ids, dtype=object)),
        "neuroid_id": ("neuroid", np.array([f"{ln}.{i}" for ln, i in zip(layer_names, idx)], dtype=object)),
        "layer": ("neuroid", np.array(layer_names, dtype=object)),
        "region": ("neuroid", np.array(regions, dtype=object)),
        "time_bin_start": ("time_bin", starts),
        "time_bin_end": ("time_bin", ends),
        "step": ("time_bin", np.array(steps, dtype=np.int64)),
    }
    if files is not None:
        coords["image_file_name"] = ("presentation", np.array(files, dtype=object))
    return xr.DataArray(
        data,
        dims=DIMS,
        coords=coords,
        name="features",
        attrs={"model": model.spec.name, "presentation": presentation, "image_size": size},
    )


def _unit_counts(model: ConvRNN, layer_sets: dict[str, list[str]], image_size: int) -> dict[str, int]:
    """Units per layer output (C*H*W) from the model's shape plan."""
    del image_size  # the plan is built for the model's own size, which features() enforces
    counts = {}
    for layers in layer_sets.values():
        for layer in layers:
            counts[layer] = int(np.prod(model.plans[layer].output_shape))
    return counts


def save_assembly(assembly: xr.DataArray, path: str | Path) -> Path:
    """Write an assembly to NetCDF atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        da = assembly.copy()
        for name, coord in da.coords.items():
            if coord.dtype == object:  # NetCDF stores variable-length strings, not Python objects
                da = da.assign_coords({name: (coord.dims, coord.values.astype(str))})
        da.to_netcdf(tmp, engine="h5netcdf")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_assembly(path: str | Path) -> xr.DataArray:
    """Read an assembly written by :func:`save_assembly` (or any single-variable NetCDF file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such assembly file {str(path)!r}")
    try:
        ds = xr.load_dataset(path, engine="h5netcdf")
    except Exception as e:  # h5py/netCDF raise many types; the contract is one line naming the file
        raise ValueError(f"cannot read {str(path)!r} as NetCDF: {' '.join(str(e).split())}") from None
    names = list(ds.data_vars)
    if len(names) != 1:
        raise ValueError(f"{str(path)!r}: expected one data variable, found {names or 'none'}")
    return ds[names[0]]
