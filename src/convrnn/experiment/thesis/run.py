"""Running the experiment: tuning, the search, the final runs and their held-out test scores, resumable.

The work is a set of tasks, each idempotent and resumable on its own:

- ``tune ARM``: an Optuna study (``convrnn search`` with a space of optimiser settings only, over the
  arm's fixed spec) whose trials are the protocol's shared candidates, enqueued in order;
- ``search``: the papers' TPE search over the shipped RGC + feedback space, every trial built at the width
  that matches the parameter budget; its best trial becomes the ``rgc_search`` arm (then tuned like the rest);
- ``final ARM SEED``: ``convrnn train`` with the arm's tuned settings and the plateau rule, then the test set
  and a slice of the training set scored at every time step, per image.

A scheduler runs ``jobs`` tasks at a time (each in its own process, one torch thread), in dependency order;
a finished task leaves a record (``tuned.json``, ``searched.json``, ``result.json``) and is never run again;
an interrupted one resumes (a study from its database, a run from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from convrnn.experiment.cells import ExperimentError
from convrnn.experiment.thesis.plan import Arm, budget, candidates, plan_arms
from convrnn.experiment.thesis.protocol import FF_ARMS, SEARCHED, Protocol
from convrnn.files import write_json, write_text
from convrnn.spec import ModelSpec

__all__ = ["TEST_SEED", "Task", "pending", "run", "seeds_for"]

TEST_SEED = 0  # one test set for every seed and arm: per-image results line up across runs
NEVER = 10**9  # an evaluation or checkpoint period that never comes


@dataclass(frozen=True)
class Task:
    kind: str  # tune | search | final
    arm: str = ""
    seed: int = -1

    @property
    def label(self) -> str:
        return {"tune": f"tune {self.arm}", "search": "search", "final": f"final {self.arm} seed {self.seed}"}[
            self.kind
        ]


# ----------------------------------------------------------------------------------------------------------------
# Files of the results folder


def read_json(path: Path) -> Any:
    """A JSON record of the results folder, or None where it is not written yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{path}: unreadable ({e})") from None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def tuned_file(root: Path, arm: str) -> Path:
    return root / "tune" / arm / "tuned.json"


def searched_file(root: Path) -> Path:
    return root / "search" / "searched.json"


def final_dir(root: Path, arm: str, seed: int) -> Path:
    return root / "final" / arm / f"seed{seed}"


def _spec_path(root: Path, spec: ModelSpec) -> Path:
    """The spec as YAML under ``root/specs``, named by its content."""
    text = spec.to_yaml()
    path = root / "specs" / f"{spec.name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    return path


def check_protocol(root: Path, p: Protocol) -> None:
    """One results folder holds one protocol: mixing two would pool incomparable numbers."""
    path = root / "protocol.json"
    old = read_json(path)
    if old is None:
        root.mkdir(parents=True, exist_ok=True)
        _write_json(path, p.to_dict())
        return
    diff = p.differences(Protocol.from_dict(old))
    if diff:
        raise ExperimentError(
            f"--out {str(root)!r} holds results of another protocol (differs in {', '.join(diff)}); "
            "choose another --out"
        )


# ----------------------------------------------------------------------------------------------------------------
# What is left to do


def _tuned(root: Path, arm: str) -> dict[str, Any] | None:
    return read_json(tuned_file(root, arm))


def seeds_for(root: Path, p: Protocol, arm: str) -> tuple[int, ...]:
    """The seeds an arm's final runs use: every seed for the feedforward arms, the searched arm and the
    ``best_cells`` fixed cells whose tuned validation top-1 is highest (known once every fixed cell is
    tuned; until then a cell gets ``other_seeds``, a subset)."""
    if arm in FF_ARMS or arm == SEARCHED:
        return p.seeds
    cells = [a for a in p.arms if a not in FF_ARMS and a != SEARCHED]
    tuned = {a: _tuned(root, a) for a in cells}
    if any(t is None for t in tuned.values()):
        return p.other_seeds
    best = sorted(cells, key=lambda a: -tuned[a]["val_top1"])[: p.best_cells]
    return p.seeds if arm in best else p.other_seeds


def is_finished(root: Path, arm: str, seed: int) -> bool:
    return (final_dir(root, arm, seed) / "result.json").is_file()


def pending(root: Path, p: Protocol) -> list[Task]:
    """Tasks whose inputs exist and whose record does not, in the order to start them (the longest chain
    first: the search, whose arm still has to be tuned and trained after it)."""
    todo: list[Task] = []
    if SEARCHED in p.arms and read_json(searched_file(root)) is None:
        todo.append(Task("search"))
    for arm in p.arms:
        if arm == SEARCHED and read_json(searched_file(root)) is None:
            continue
        if _tuned(root, arm) is None:
            todo.append(Task("tune", arm))
    for arm in p.arms:
        if _tuned(root, arm) is None:
            continue
        for seed in seeds_for(root, p, arm):
            if not is_finished(root, arm, seed):
                todo.append(Task("final", arm, seed))
    return todo


# ----------------------------------------------------------------------------------------------------------------
# The tasks (each runs in a worker process)


def _budget(p: Protocol, steps: int, threads: int) -> dict[str, Any]:
    """The per-trial training budget of tuning and search trials (TrainConfig fields)."""
    return {
        "data": p.data,
        "epochs": NEVER,  # max_steps ends a trial
        "max_steps": steps,
        "batch_size": p.batch_size,
        "image_size": p.image_size,
        "times": p.times,
        "seed": p.seeds[0],
        "train_size": p.train_size,
        "val_size": p.val_size,
        "checkpoint_every": 200,
        "threads": threads,
        "workers": 0,
    }


def _train_space(p: Protocol) -> dict[str, Any]:
    """The optimiser settings tuned for every arm: AdamW with a constant rate after a linear warm-up (the
    plateau schedule before its first plateau), gradient norm clipped to 1."""
    return {
        "optimizer": "adamw",
        "schedule": "plateau",
        "lr": {"low": p.lr[0], "high": p.lr[1], "log": True},
        "weight_decay": {"low": p.weight_decay[0], "high": p.weight_decay[1], "log": True},
        "warmup_steps": {"low": p.warmup[0], "high": p.warmup[1]},
    }


def _log(label: str) -> Callable[[str], None]:
    """Progress of a task's trials, one line each, on the worker's standard output (the experiment's log)."""
    return lambda m: print(f"[{label}] {m}", flush=True)


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, round(float(v), 12)) for k, v in params.items()))


def tune(root: Path, p: Protocol, arm: str, threads: int) -> dict[str, Any]:
    """Train the arm's spec with each shared candidate setting; record the best on the validation set."""
    from optuna.trial import TrialState

    from convrnn.search.space import SearchSpace
    from convrnn.search.study import SearchConfig, open_study, run_search

    spec_file = _arm_spec_file(root, arm)
    folder = root / "tune" / arm
    space_file = folder / "space.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(space_file, yaml.safe_dump({"base": str(spec_file), "train": _train_space(p)}, sort_keys=False))
    cfg = SearchConfig(
        study=f"tune-{arm}",
        space=str(space_file),
        out=str(folder),
        trials=p.tune_trials,
        sampler="random",  # never asked: every trial is an enqueued candidate
        pruner="none",
        train=_budget(p, p.tune_steps, threads),
    ).validate()
    study = open_study(cfg, SearchSpace.load(space_file))
    # Enqueue every candidate the study does not hold yet (a process killed while enqueueing left some out).
    held = {_key(t.params) for t in study.get_trials(deepcopy=False) if t.params}
    held |= {_key(t.system_attrs.get("fixed_params", {})) for t in study.get_trials(deepcopy=False)}
    for params in candidates(p):
        if _key(params) not in held:
            study.enqueue_trial(params)
    run_search(cfg, log=_log(f"tune {arm}"))
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    trials = [t for t in finished if t.state == TrialState.COMPLETE]
    if not trials:
        raise ExperimentError(f"tune {arm}: no candidate finished (all diverged or failed)")
    rows = [
        {
            "number": t.number,
            "lr": t.params["train.lr"],
            "weight_decay": t.params["train.weight_decay"],
            "warmup_steps": t.params["train.warmup_steps"],
            "val_top1": t.value,  # None: diverged
        }
        for t in finished
    ]
    best = max(trials, key=lambda t: (t.value, -t.number))
    record = {
        "arm": arm,
        "spec": str(spec_file),
        "lr": best.params["train.lr"],
        "weight_decay": best.params["train.weight_decay"],
        "warmup_steps": best.params["train.warmup_steps"],
        "val_top1": best.value,
        "trial": best.number,
        "trials": rows,
        "diverged": sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("diverged")),
    }
    _write_json(tuned_file(root, arm), record)
    return record


def search(root: Path, p: Protocol, threads: int) -> dict[str, Any]:
    """The papers' search over the shipped RGC + feedback space, each trial at the budget's width."""
    from optuna.trial import TrialState

    from convrnn.search.space import DEFAULT_SPACE, SearchSpace
    from convrnn.search.study import SearchConfig, open_study, run_search

    folder = root / "search"
    folder.mkdir(parents=True, exist_ok=True)
    space = yaml.safe_load(DEFAULT_SPACE.read_text())
    space["train"] = _train_space(p)  # the optimiser as every arm's; the cell and feedback as the paper's
    space_file = folder / "space.yaml"
    write_text(space_file, yaml.safe_dump(space, sort_keys=False))
    train = _budget(p, p.search_steps, threads)
    cfg = SearchConfig(
        study="search",
        space=str(space_file),
        out=str(folder),
        trials=p.search_trials,
        sampler="tpe",
        startup_trials=p.search_startup,
        pruner="halving",
        prune_every=p.search_rung,
        min_resource=p.search_rung,
        reduction_factor=4,
        match_params=budget(p),
        train=train,
    ).validate()
    run_search(cfg, log=_log("search"))

    study = open_study(cfg, SearchSpace.load(space_file))
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise ExperimentError("search: no trial finished")
    best = max(done, key=lambda t: (t.value, -t.number))
    spec = ModelSpec.from_dict(best.user_attrs["spec"])
    spec.name = SEARCHED
    path = _spec_path(root, spec)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    record = {
        "spec": str(path),
        "trial": best.number,
        "val_top1": best.value,
        "params": best.user_attrs["parameters"],
        "train": best.user_attrs.get("train", {}),
        "states": states,
        "steps": sum(int(t.user_attrs.get("steps", 0)) for t in study.get_trials(deepcopy=False)),
    }
    _write_json(searched_file(root), record)
    return record


def _arm_spec_file(root: Path, arm: str) -> Path:
    if arm == SEARCHED:
        rec = read_json(searched_file(root))
        if rec is None:
            raise ExperimentError(f"{arm}: the search has not finished")
        return Path(rec["spec"])
    plan = read_json(root / "plan.json")
    if plan is None or arm not in plan["arms"]:
        raise ExperimentError(f"{arm}: not planned in {root / 'plan.json'}")
    return Path(plan["arms"][arm]["spec"])


@torch.no_grad()
def predictions(model: torch.nn.Module, images: np.ndarray, times: int, batch: int = 256) -> np.ndarray:
    """The predicted class of every image at every step, (T, N) int16, from uint8 gray images (N, H, W)."""
    from convrnn.data.images import IMAGENET_MEAN, IMAGENET_STD

    model.eval()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    out = []
    for i in range(0, len(images), batch):
        gray = torch.from_numpy(images[i : i + batch]).float().div_(255)[:, None]
        x = (gray.expand(-1, 3, -1, -1) - mean) / std
        out.append(model(x, times=times).logits.argmax(-1).to(torch.int16))
    return torch.cat(out, dim=1).numpy()


def test_set(p: Protocol) -> dict[str, np.ndarray]:
    """The held-out test images with their labels and difficulty (fraction of the target occluded, debris)."""
    from convrnn.data.clutter import load_clutter_meta

    return load_clutter_meta("test", p.test_size, TEST_SEED, p.task)


def final(root: Path, p: Protocol, arm: str, seed: int, threads: int) -> dict[str, Any]:
    """Train the arm with its tuned settings until the plateau rule (or the cap) stops it; score it."""
    import convrnn
    from convrnn.data.clutter import load_clutter
    from convrnn.train.config import TrainConfig
    from convrnn.train.trainer import train

    tuned = _tuned(root, arm)
    folder = final_dir(root, arm, seed)
    cfg = TrainConfig(
        model=tuned["spec"],
        data=p.data,
        out=str(folder),
        epochs=NEVER,
        max_steps=p.max_steps,
        batch_size=p.batch_size,
        image_size=p.image_size,
        times=p.times,
        loss="last",
        optimizer="adamw",
        lr=tuned["lr"],
        weight_decay=tuned["weight_decay"],
        warmup_steps=tuned["warmup_steps"],
        schedule="plateau",
        plateau_patience=p.patience,
        plateau_delta=p.delta,
        plateau_drops=p.drops,
        eval_every=NEVER,
        eval_every_steps=p.eval_every,
        seed=seed,
        checkpoint_every=p.eval_every,
        keep_checkpoints=1,
        workers=0,
        threads=threads,
        train_size=p.train_size,
        val_size=p.val_size,
        progress=False,
    )
    res = train(cfg)
    model = convrnn.create_model(ModelSpec.load(folder / "final" / "spec.yaml"))
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "final" / "model.safetensors")))
    test = test_set(p)
    pred_test = predictions(model, test["images"], p.times)
    train_images, train_labels = load_clutter("train", p.train_size, seed, p.task)
    n = p.train_eval_size
    pred_train = predictions(model, train_images[:n], p.times)
    np.savez_compressed(folder / ".predictions.tmp.npz", test=pred_test, train=pred_train)
    os.replace(folder / ".predictions.tmp.npz", folder / "predictions.npz")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("event") == "eval"]
    result = {
        "arm": arm,
        "seed": seed,
        "params": sum(t.numel() for t in model.parameters() if t.requires_grad),
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_steps,
        "steps": res["step"],
        "stop": res["stop"],
        "drops": res["plateau"]["drops"],
        "val_top1": res["decoded_top1"],
        "val_top1_per_step": res["top1_per_step"],
        "test_top1_per_step": (pred_test == test["labels"][None]).mean(1).tolist(),
        "train_top1_per_step": (pred_train == train_labels[None, :n]).mean(1).tolist(),
        "val_curve": [(e["step"], e["decoded_top1"]) for e in evals],
    }
    _write_json(folder / "result.json", result)
    return result


def _execute(root: str, protocol: dict[str, Any], task: Task, threads: int) -> dict[str, Any]:
    """A task in a worker process: its record, wall and CPU seconds, or its error as one line."""
    torch.set_num_threads(threads)
    rootp, p = Path(root), Protocol.from_dict(protocol)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if task.kind == "tune":
            tune(rootp, p, task.arm, threads)
        elif task.kind == "search":
            search(rootp, p, threads)
        else:
            final(rootp, p, task.arm, task.seed, threads)
        error = None
    except Exception as e:  # one failed task must not take the others down with it
        error = f"{type(e).__name__}: {e}"
    return {
        "task": task.label,
        "error": error,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------------------------
# The scheduler


def write_plan(root: Path, p: Protocol, arms: list[Arm]) -> None:
    record = {
        "budget": arms[0].budget if arms else None,
        "arms": {
            a.name: {
                "width": a.width,
                "params": a.params,
                "budget": a.budget,
                "spec": str(_spec_path(root, a.spec)) if a.spec is not None else None,
            }
            for a in arms
        },
        "candidates": candidates(p),
    }
    _write_json(root / "plan.json", record)


def cpu_name() -> str:
    """The CPU's model name (numbers are only comparable on the same kind of CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def spent(root: Path) -> dict[str, float]:
    """CPU and wall seconds of every finished task so far (all invocations), from the ledger."""
    cpu = wall = 0.0
    path = root / "ledger.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a killed process
                continue
            cpu += rec.get("cpu_s", 0.0)
            wall += rec.get("wall_s", 0.0)
    return {"cpu_s": cpu, "wall_s": wall}


def run(
    p: Protocol,
    out: str | Path,
    *,
    jobs: int = 2,
    threads: int = 1,
    only: str | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Run every task not finished yet (``only``: tasks of one kind); returns the errors of failed tasks."""
    if jobs < 1 or threads < 1:
        raise ExperimentError(f"--jobs/--threads: must be >= 1, got {jobs}/{threads}")
    if only not in (None, "tune", "search", "final"):
        raise ExperimentError(f"--only: choose tune, search or final, got {only!r}")
    root = Path(out).resolve()  # records name specs by path: absolute, so that any working folder can resume
    check_protocol(root, p)
    arms = plan_arms(p)
    write_plan(root, p, arms)
    # Render and cache the data once, here, so that parallel tasks only ever load them.
    from convrnn.data.clutter import load_clutter

    for seed in sorted({*p.seeds, *p.other_seeds}):
        load_clutter("train", p.train_size, seed, p.task)
        load_clutter("val", p.val_size, seed, p.task)
    test_set(p)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    invocation = {
        "started": started,
        "jobs": jobs,
        "threads": threads,
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    # Recorded at the start too: an invocation the session's end kills still says where the work ran.
    with open(root / "invocations.jsonl", "a") as f:
        f.write(json.dumps(invocation | {"event": "start"}) + "\n")
    errors: list[str] = []
    failed: set[Task] = set()
    running: dict[Future, Task] = {}
    ctx = get_context("spawn")  # a forked child would inherit this process's torch thread pool
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        while True:
            busy = set(running.values())
            ready = [t for t in pending(root, p) if t not in busy and t not in failed and (only in (None, t.kind))]
            while ready and len(running) < jobs:
                task = ready.pop(0)
                log(f"start {task.label}")
                running[pool.submit(_execute, str(root), p.to_dict(), task, threads)] = task
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                rec = fut.result()
                with open(root / "ledger.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if rec["error"]:
                    failed.add(task)
                    errors.append(f"{task.label}: {rec['error']}")
                    log(f"FAILED {task.label}: {rec['error']}")
                else:
                    log(f"done {task.label}: {rec['wall_s']:.0f} s wall, {rec['cpu_s']:.0f} s CPU")
    wall = time.perf_counter() - t0
    with open(root / "invocations.jsonl", "a") as f:
        f.write(json.dumps(invocation | {"event": "end", "wall_s": round(wall, 1)}) + "\n")
    left = pending(root, p)
    s = spent(root)
    log(
        f"{len(left)} task(s) left; this invocation {wall:,.0f} s wall; "
        f"spent so far {s['cpu_s'] / 3600:.2f} CPU h ({s['wall_s'] / 3600:.2f} task-wall h)"
    )
    return errors
