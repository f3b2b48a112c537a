"""Training checkpoints that survive ``kill -9`` at any moment.

A checkpoint is a folder ``checkpoints/step_0000123/`` holding ``model.safetensors`` (the weights) and
``state.pt`` (optimizer, scheduler, counters, RNG states: tensors, numbers, strings and lists only,
read back with ``torch.load(weights_only=True)``, so loading never unpickles code). It is written
under a temporary name and renamed into place, then ``checkpoints/latest`` (also replaced atomically)
names it. A crash while writing leaves the previous checkpoint and ``latest`` untouched; so does a
full disk, which is reported as :class:`CheckpointWriteError`.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is still valid."""


def rng_state() -> dict[str, Any]:
    """Every RNG a run touches, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run: Path, step: int, model: nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``run/checkpoints/step_<step>`` atomically and point ``latest`` at it."""
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = root / name
    tmp = root / f".tmp-{name}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        latest_tmp = root / ".latest.tmp"
        latest_tmp.write_text(name)
        latest_tmp.replace(root / "latest")
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = (root / "latest").read_text().strip() if (root / "latest").exists() else "none"
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} in {str(root)!r} ({e.strerror or e}); "
            f"the previous checkpoint ({prev}) is intact"
        ) from None
    # Keep the newest few; the one `latest` names is never removed.
    old = sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_latest(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The weights and state of the checkpoint ``latest`` names, or None if there is none."""
    pointer = run / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    folder = run / "checkpoints" / pointer.read_text().strip()
    weights = load_file(str(folder / "model.safetensors"), device="cpu")
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    return weights, state
