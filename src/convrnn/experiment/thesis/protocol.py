"""The protocol of ``convrnn experiment thesis``, as data: fixed before the final runs, recorded with them.

Everything that sets a number of the experiment lives in :class:`Protocol`: the task (a
:class:`~convrnn.data.clutter.ClutterConfig`, typed, not a string), the data sizes, the arms, the tuning
budget and its candidate settings, the search budget, the stopping rule and the seeds. A results folder
holds one protocol (``protocol.json``); a run with another one there is refused, naming the fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from convrnn.data.clutter import ClutterConfig
from convrnn.errors import SpecError
from convrnn.experiment.cells import CELLS
from convrnn.experiment.cells import DESCRIPTIONS as CELL_DESCRIPTIONS
from convrnn.serialize import to_data

__all__ = ["ARMS", "DEFAULT", "DESCRIPTIONS", "FF_ARMS", "QUICK", "SEARCHED", "Protocol", "ProtocolError"]

FF_ARMS = ("ff_small", "ff_wide", "ff_large", "ff_deep")
SEARCHED = "rgc_search"
ARMS = (*FF_ARMS, *CELLS, SEARCHED)
DESCRIPTIONS = {
    "ff_small": "feedforward, base width (below the budget)",
    "ff_wide": CELL_DESCRIPTIONS["ff_wide"],
    "ff_large": "feedforward, wider still (twice the budget)",
    "ff_deep": CELL_DESCRIPTIONS["ff_deep"],
    **{cell: CELL_DESCRIPTIONS[cell] for cell in CELLS},
    SEARCHED: "RGC cell + feedback found by TPE search (matched)",
}

# The clutter of docs/results.md's cell comparison: harder than the generator's defaults.
HARD_CLUTTER = ClutterConfig(
    image_size=48,
    distractors=4,
    debris=10,
    occlusion=0.5,
    distractor_scale=(0.6, 0.9),
    distractor_intensity=(0.5, 0.85),
)


class ProtocolError(SpecError):
    """The protocol is malformed or conflicts with the results folder; the message names the field."""


@dataclass(frozen=True)
class Protocol:
    """Every setting of the experiment (see docs/results.md for why each value)."""

    # --- data: one task; training images many enough that no arm memorises them --------------------------------
    task: ClutterConfig = HARD_CLUTTER
    train_size: int = 200_000  # per seed (each seed renders its own training images)
    val_size: int = 5_000  # tuning, search and the stopping rule read these only
    test_size: int = 10_000  # held out: the final numbers, never used for any choice
    train_eval_size: int = 5_000  # training images scored at the end, for the train-test gap
    # --- models ------------------------------------------------------------------------------------------------------
    arms: tuple[str, ...] = ARMS
    base_width: float = 0.25  # the budget is rgc_shallow's parameter count at this width
    large_factor: float = 2.0  # ff_large's budget, in budgets
    times: int = 12  # steps unrolled, the image shown throughout; loss on the last step
    batch_size: int = 64
    # --- tuning: the same candidate optimiser settings for every arm (AdamW) ---------------------------------------
    tune_trials: int = 8
    tune_steps: int = 800  # optimizer steps per candidate, constant rate after the warm-up
    lr: tuple[float, float] = (3e-4, 1e-2)  # log-uniform
    weight_decay: tuple[float, float] = (1e-6, 1e-3)  # log-uniform
    warmup: tuple[int, int] = (0, 400)  # steps, uniform
    candidates_seed: int = 0  # scrambled Sobol sequence of the candidates
    # --- search arm: TPE over the shipped RGC + feedback space, every trial matched to the budget ----------------
    search_trials: int = 32
    search_startup: int = 10  # random trials before TPE
    search_steps: int = 800  # per trial, as tuning
    search_rung: int = 200  # successive halving (reduction 4): the first rung, in optimizer steps
    # --- final runs: trained to a plateau -------------------------------------------------------------------------
    eval_every: int = 400  # optimizer steps between validations
    patience: int = 3  # validations without a rise of `delta` = a plateau
    delta: float = 0.005  # top-1 fraction (half a point)
    drops: int = 2  # the rate is divided by 10 at the first `drops` plateaus; the next one ends the run
    max_steps: int = 8_000  # the cap; a run that reaches it is marked
    seeds: tuple[int, ...] = (0, 1, 2)  # feedforward arms, the searched arm and the `best_cells` best fixed cells
    other_seeds: tuple[int, ...] = (0,)  # the remaining fixed cells
    best_cells: int = 2  # fixed cells with the best tuned validation top-1 get every seed
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the protocol

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):  # from JSON
            object.__setattr__(self, "task", ClutterConfig(**self.task))
        for name in ("arms", "seeds", "other_seeds", "lr", "weight_decay", "warmup"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> Protocol:
        def err(name: str, msg: str) -> ProtocolError:
            return ProtocolError(f"protocol.{name}: {msg}")

        ints = (
            "train_size",
            "val_size",
            "test_size",
            "train_eval_size",
            "times",
            "batch_size",
            "tune_trials",
            "tune_steps",
            "search_trials",
            "search_steps",
            "search_rung",
            "eval_every",
            "patience",
            "max_steps",
        )
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise err(name, f"must be a positive integer, got {v!r}")
        if self.train_eval_size > self.train_size:
            raise err("train_eval_size", f"{self.train_eval_size} exceeds train_size {self.train_size}")
        if self.train_size < self.batch_size:
            raise err("train_size", f"{self.train_size} is less than one batch of {self.batch_size}")
        if self.times < 7:
            raise err("times", f"the readout sees the image from step 5; need >= 7, got {self.times}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms or len(set(self.arms)) != len(self.arms):
            raise err("arms", f"need distinct arms out of {', '.join(ARMS)}; got {list(self.arms)}")
        if not self.base_width > 0 or not self.large_factor > 1:
            raise err("base_width", "base_width must be > 0 and large_factor > 1")
        for name in ("lr", "weight_decay"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise err(name, f"need 0 < low <= high, got {getattr(self, name)}")
        if not 0 <= self.warmup[0] <= self.warmup[1]:
            raise err("warmup", f"need 0 <= low <= high, got {self.warmup}")
        if not 0 <= self.delta < 1:
            raise err("delta", f"must lie in [0, 1), got {self.delta}")
        if self.drops < 0:
            raise err("drops", f"must be >= 0, got {self.drops}")
        if self.search_startup < 1 or self.search_rung > self.search_steps:
            raise err("search_rung", "search_startup must be >= 1 and search_rung <= search_steps")
        seeds = [*self.seeds, *self.other_seeds]
        if not self.seeds or not self.other_seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
            raise err("seeds", f"need non-empty lists of non-negative integers, got {self.seeds}, {self.other_seeds}")
        if not set(self.other_seeds) <= set(self.seeds):
            raise err("other_seeds", f"{self.other_seeds} must be a subset of seeds {self.seeds}")
        if self.best_cells < 0:
            raise err("best_cells", f"must be >= 0, got {self.best_cells}")
        if self.max_steps < self.eval_every:
            raise err("max_steps", f"{self.max_steps} is less than one evaluation period ({self.eval_every})")
        return self

    # --- derived ---------------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.task.image_size

    @property
    def data(self) -> str:
        """The task as `convrnn train`'s ``--data`` value."""
        knobs = {k: v for k, v in to_data(self.task).items() if k not in ("image_size", "objects")}
        name = "clutter" if self.task.objects == "digits" else "clutter-fashion"
        return f"{name}:{json.dumps(knobs)}"

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_dict(cls, data: Any) -> Protocol:
        """From plain data (``protocol.json``); errors name the field."""
        if not isinstance(data, dict):
            raise ProtocolError(f"protocol: expected a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtocolError(f"protocol.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
        data = dict(data)
        if "task" in data:
            task = data["task"]
            fields = {f.name for f in dataclasses.fields(ClutterConfig)}
            if not isinstance(task, dict) or set(task) - fields:
                bad = sorted(set(task) - fields) if isinstance(task, dict) else [type(task).__name__]
                raise ProtocolError(f"protocol.task: not a clutter configuration (unknown {', '.join(bad)})")
            try:
                data["task"] = ClutterConfig(**task)
            except ValueError as e:
                raise ProtocolError(f"protocol.task: {e}") from None
        return cls(**data)

    def differences(self, other: Protocol) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


DEFAULT = Protocol()
# The whole pipeline on a tiny scale, in minutes: a smoke test whose numbers mean nothing.
QUICK = Protocol(
    task=dataclasses.replace(HARD_CLUTTER, image_size=32),
    train_size=1024,
    val_size=128,
    test_size=128,
    train_eval_size=128,
    base_width=0.125,
    times=8,
    batch_size=32,
    tune_trials=2,
    tune_steps=16,
    warmup=(0, 4),
    search_trials=3,
    search_startup=2,
    search_steps=16,
    search_rung=8,
    eval_every=8,
    patience=1,
    drops=1,
    max_steps=48,
    seeds=(0, 1),
    other_seeds=(0,),
    best_cells=1,
)
