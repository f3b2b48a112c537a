"""What the experiment trains: every arm matched to the parameter budget, the shared tuning candidates,
and the cost of it all, estimated before anything runs."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from convrnn.experiment import cells
from convrnn.experiment.cells import ExperimentError, match_width
from convrnn.experiment.thesis.protocol import DESCRIPTIONS, FF_ARMS, SEARCHED, Protocol
from convrnn.spec import ModelSpec
from convrnn.zoo.sizing import count_params

__all__ = ["Arm", "candidates", "plan_arms", "plan_table", "step_seconds"]

TOLERANCE = 0.10  # a matched arm lies within this fraction of its budget


@dataclass
class Arm:
    """One arm at its matched width (the searched arm's spec is known once the search has run)."""

    name: str
    width: float | None
    params: int | None
    budget: int
    spec: ModelSpec | None

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.name]


def _scale(p: Protocol, width: float) -> cells.Scale:
    """The cell comparison's spec builder reads its sizes from a Scale: the same backbone and cells."""
    return cells.Scale(image_size=p.image_size, base_width=width, times=p.times)


def build_spec(name: str, width: float, p: Protocol) -> ModelSpec:
    """The spec of a fixed arm at a width multiplier (feedforward arms are the cell comparison's ff)."""
    model = {"ff_small": "ff", "ff_wide": "ff_wide", "ff_large": "ff_wide"}.get(name, name)
    spec = cells.build_spec(model, width, _scale(p, width))
    spec.name = f"{name}_w{width:g}"
    return spec


def budget(p: Protocol) -> int:
    """The parameter budget: ``rgc_shallow`` at the base width, at the task's size and 10 classes."""
    return count_params(build_spec("rgc", p.base_width, p))


def plan_arms(p: Protocol) -> list[Arm]:
    """Every arm of ``p`` matched to its budget; errors name an arm that cannot be matched."""
    target = budget(p)
    out = []
    for name in p.arms:
        if name == SEARCHED:
            out.append(Arm(name, None, None, target, None))
            continue
        if name == "ff_small":
            spec = build_spec(name, p.base_width, p)
            out.append(Arm(name, p.base_width, count_params(spec), count_params(spec), spec))
            continue
        goal = round(target * p.large_factor) if name == "ff_large" else target
        width, params = match_width(lambda w, n=name: build_spec(n, w, p), goal, p.base_width)
        if abs(params / goal - 1) > TOLERANCE:
            raise ExperimentError(
                f"arm {name!r}: the closest width ({width:g}) gives {params:,} parameters, "
                f"{100 * (params / goal - 1):+.1f}% off its budget {goal:,}"
            )
        out.append(Arm(name, width, params, goal, build_spec(name, width, p)))
    return out


def candidates(p: Protocol) -> list[dict[str, Any]]:
    """The optimiser settings every arm tries: a scrambled Sobol sequence over log lr, log weight decay
    and warm-up steps, the same points for every arm (no arm's tuning is luckier than another's)."""
    from scipy.stats import qmc

    pts = qmc.Sobol(d=3, scramble=True, seed=p.candidates_seed).random(p.tune_trials)
    out = []
    for u in pts:
        lr = math.exp(math.log(p.lr[0]) + u[0] * (math.log(p.lr[1]) - math.log(p.lr[0])))
        wd = math.exp(math.log(p.weight_decay[0]) + u[1] * (math.log(p.weight_decay[1]) - math.log(p.weight_decay[0])))
        warm = p.warmup[0] + math.floor(u[2] * (p.warmup[1] - p.warmup[0] + 1))
        out.append(
            {"train.lr": float(f"{lr:.4g}"), "train.weight_decay": float(f"{wd:.4g}"), "train.warmup_steps": warm}
        )
    return out


def step_seconds(spec: ModelSpec, p: Protocol, steps: int = 3) -> float:
    """CPU seconds of one training step (one torch thread, loss on the last step), the median of ``steps``
    after a warm-up step: the unit of the cost estimate."""
    import convrnn

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = convrnn.create_model(spec)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(p.batch_size, 3, p.image_size, p.image_size)
        y = torch.randint(0, 10, (p.batch_size,))
        times = []
        for i in range(steps + 1):
            t0 = time.process_time()
            loss = torch.nn.functional.cross_entropy(model(x, times=p.times).logits[-1], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.process_time() - t0)
        return sorted(times)[len(times) // 2]
    finally:
        torch.set_num_threads(prev)


def cost_hours(arms: Sequence[Arm], p: Protocol, seconds: dict[str, float]) -> dict[str, float]:
    """Planned CPU hours by phase, at most (every final run to the cap; the search without pruning, its
    arm's step time taken as the zoo RGC's). Evaluation adds about a tenth."""
    recurrent = [a.name for a in arms if a.name not in FF_ARMS]
    fixed_cells = [n for n in recurrent if n != SEARCHED]
    rgc_s = seconds.get("rgc", max(seconds.values()))
    tune = sum(seconds.get(a.name, rgc_s) for a in arms) * p.tune_trials * p.tune_steps
    search = rgc_s * p.search_trials * p.search_steps if SEARCHED in (a.name for a in arms) else 0.0
    best = set(sorted(fixed_cells)[: p.best_cells])  # which cells get every seed is known later: a stand-in
    final = 0.0
    for a in arms:
        many = a.name in FF_ARMS or a.name == SEARCHED or a.name in best
        final += seconds.get(a.name, rgc_s) * p.max_steps * len(p.seeds if many else p.other_seeds)
    return {"tune": tune / 3600, "search": search / 3600, "final": final / 3600}


def plan_table(arms: Sequence[Arm], seconds: dict[str, float] | None = None) -> str:
    lines = [
        "| arm | configuration | width | parameters | vs budget | s / step (1 thread) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for a in arms:
        width = "searched" if a.width is None else f"{a.width:.3g}"
        params = "matched per trial" if a.params is None else f"{a.params:,}"
        off = "–" if a.params is None or a.name == "ff_small" else f"{100 * (a.params / a.budget - 1):+.1f}%"
        sec = f"{seconds[a.name]:.3f}" if seconds and a.name in seconds else "–"
        lines.append(f"| `{a.name}` | {a.description} | {width} | {params} | {off} | {sec} |")
    return "\n".join(lines)
