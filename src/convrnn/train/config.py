"""The resolved configuration of a training run (written as ``config.yaml`` in the run folder).

Defaults follow the reference where it recorded them: SGD with Nesterov momentum 0.9 (its checkpoints
hold ``Momentum`` slots; the LSTM search trial used Nesterov 0.9), L2 weight decay 1e-4 on every
variable (for SGD the same as ``weight_decay``), gradient clipping (by norm 1.0 as PyTorchTNN's
rgc_shallow recipe; ``clip_value`` gives the reference trial's clipping by value, ±0.324), loss on
the last step's logits (the reference's ``decoder_type='last'``). Not recorded anywhere: epochs and
schedule; here a cosine schedule with a linear warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from convrnn.errors import SpecError
from convrnn.serialize import from_data, to_data

# Fields that do not change the numbers a run computes: a resumed run may differ in these.
# Activation checkpointing trades memory for time and computes the same math (gradients equal to
# float rounding), so a run may resume with it switched on or off.
NON_SEMANTIC = {
    "workers",
    "force",
    "skip_bad_images",
    "log_every",
    "progress",
    "out",
    "grad_checkpointing",
    "segment_steps",
}


@dataclass
class TrainConfig:
    """Every setting of a training run; ``convrnn train`` flags map one-to-one onto these fields."""

    model: str = "rgc_shallow"  # a zoo name or a spec YAML/JSON file
    data: str = "clutter"  # a built-in task ("clutter": digits, "clutter-fashion": garments) or an ImageNet folder
    out: str = "runs/run"
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 64  # the global batch, split across processes under torchrun
    image_size: int | None = None  # default: 32 for clutter, 224 for folders
    width: float | None = None  # the zoo's channel width multiplier (default 1.0)
    times: int | None = None  # steps to unroll (default: the model's)
    loss: Literal["last", "avg", "all"] = (
        "last"  # on the last step / the window mean / every step once the readout sees the stimulus
    )
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    clip_norm: float | None = 1.0
    clip_value: float | None = None
    schedule: Literal["cosine", "step", "constant", "plateau"] = "cosine"
    warmup_steps: int = 0
    step_every: int = 30  # epochs between x0.1 drops with schedule="step"
    # schedule="plateau": constant after the warm-up; when validation top-1 (the decoded readout) has not
    # risen by plateau_delta over plateau_patience evaluations, the rate is multiplied by plateau_factor;
    # the plateau after plateau_drops such drops ends the run (epochs/max_steps stay the cap).
    plateau_patience: int = 3  # evaluations
    plateau_delta: float = 0.005  # top-1 as a fraction: 0.005 = half a point
    plateau_factor: float = 0.1
    plateau_drops: int = 2
    seed: int = 0
    checkpoint_every: int = 500  # optimizer steps; also at each epoch end
    keep_checkpoints: int = 2
    eval_every: int = 1  # epochs
    eval_every_steps: int | None = None  # also evaluate every N optimizer steps (e.g. for pruning a search trial)
    workers: int = 2
    amp: bool = False  # bf16 autocast
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    grad_checkpointing: bool = False  # keep each layer's step inputs only; run the step again in the backward pass
    segment_steps: int | None = None  # with grad_checkpointing: also checkpoint the unroll in segments of N steps
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-identical resume on CPU)
    threads: int | None = None  # torch threads per process (default: torch's)
    train_size: int = 10000  # built-in task: images per split
    val_size: int = 2000
    skip_bad_images: bool = False
    force: bool = False  # reuse an --out that holds a run of another config
    log_every: int = 10
    progress: bool = True

    def validate(self) -> TrainConfig:
        for name in ("epochs", "batch_size", "checkpoint_every", "keep_checkpoints", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.plateau_patience < 1 or self.plateau_drops < 0:
            raise SpecError(
                f"plateau_patience/plateau_drops: need >= 1 / >= 0, got {self.plateau_patience}/{self.plateau_drops}"
            )
        if not 0 < self.plateau_factor < 1:
            raise SpecError(f"plateau_factor: must lie in (0, 1), got {self.plateau_factor}")
        if self.plateau_delta < 0:
            raise SpecError(f"plateau_delta: must be >= 0, got {self.plateau_delta}")
        for name in ("max_steps", "eval_every_steps", "segment_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SpecError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise SpecError(f"lr: must be > 0, got {self.lr}")
        if self.clip_norm is not None and self.clip_value is not None:
            raise SpecError("clip_norm/clip_value: choose one way to clip gradients")
        if self.segment_steps is not None and not self.grad_checkpointing:
            raise SpecError(
                "segment_steps: needs grad_checkpointing (segments run with the per-layer checkpoints inside)"
            )
        if self.workers < 0:
            raise SpecError(f"workers: must be >= 0, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise SpecError(f"threads: must be >= 1, got {self.threads}")
        if self.width is not None and not self.width > 0:
            raise SpecError(f"width: must be > 0, got {self.width}")
        if self.image_size is not None and self.image_size < 32:
            raise SpecError(f"image_size: the models need at least 32 px, got {self.image_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_data(cls, data, "config")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields (that change the numbers) where two configs differ."""
        return [
            f.name
            for f in fields(self)
            if f.name not in NON_SEMANTIC and getattr(self, f.name) != getattr(other, f.name)
        ]
