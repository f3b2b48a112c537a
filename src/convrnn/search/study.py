"""The search engine: an Optuna study in a database, worked on by any number of worker processes.

Storage is a SQLite file by default (no server) or any SQLAlchemy URL, e.g. ``postgresql://...``:
every process on every machine that runs the same command against the same URL joins the study.

Each worker loops until the study holds ``trials`` finished trials (COMPLETE + PRUNED, counted in
the database, not per invocation, so re-running a command continues the study):

1. fail stale trials: a RUNNING trial whose heartbeat is older than ``grace`` seconds lost its
   worker; it is marked FAIL and a copy with the same parameters is queued (Optuna's retry
   callback, up to ``max_retry`` times per trial). The copy resumes the dead
   worker's run folder from its last checkpoint where that folder is reachable;
2. if finished + running trials already reach the target, wait (a running trial may still die);
3. ask for a trial (queued retries first), start its heartbeat, and make sure it is needed: a trial
   asked for concurrently beyond the target (its number ranks past the target among the finished
   and running ones) or a second copy of the same retry (SQLite lets two workers fail the same
   stale trial at once) is closed as FAIL with the user attribute ``skipped`` before any training,
   and a skipped queued trial is queued again. So no trial is lost and none is trained twice;
4. train it (:mod:`convrnn.search.objective`) and tell the result.

A worker stopped by Ctrl-C or SIGTERM closes its trial as FAIL and queues its retry at once, so
the next run picks it up without waiting for the heartbeat to go stale.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from convrnn.errors import SpecError
from convrnn.search.space import SearchSpace

# TrainConfig fields a search fixes for every trial (its per-trial budget); the rest come from the space.
BUDGET_FIELDS = (
    "data",
    "epochs",
    "max_steps",
    "batch_size",
    "image_size",
    "width",
    "times",
    "seed",
    "train_size",
    "val_size",
    "checkpoint_every",
    "amp",
    "channels_last",
    "deterministic",
    "threads",
    "workers",
)
# Settings that do not change what a trial computes: a resumed study may differ in these.
NON_SEMANTIC = {"study", "storage", "out", "trials", "workers", "heartbeat", "grace", "max_retry", "poll"}
NON_SEMANTIC_TRAIN = {"threads", "workers"}


@dataclass
class SearchConfig:
    """Everything ``convrnn search`` needs; the CLI flags map onto these fields."""

    study: str
    space: str | None = None  # a space file; None: the shipped default (the paper's space)
    storage: str | None = None  # None: sqlite:///<out>/study.db
    out: str | None = None  # trial run folders; None: runs/search/<study>
    trials: int = 20  # finished (COMPLETE + PRUNED) trials the study should hold
    workers: int = 1  # local worker processes
    sampler: Literal["tpe", "random"] = "tpe"
    startup_trials: int = 10  # TPE: random trials before the model takes over
    # Successive halving with reduction 4: measured against Hyperband and no pruning in
    # benchmarks/search_efficiency.py (docs/search.md).
    pruner: Literal["hyperband", "halving", "median", "threshold", "none"] = "halving"
    prune_every: int | None = None  # evaluate (and report) every N optimizer steps; None: every epoch
    min_resource: int | None = None  # optimizer steps before a trial may be pruned; None: the first report
    reduction_factor: int = 4  # halving / hyperband: keep 1 in this many at each rung
    prune_below: float | None = None  # threshold pruner: accuracy under which a trial stops
    objective: Literal["accuracy", "accuracy-size"] = "accuracy"  # accuracy-size: also minimise parameters
    heartbeat: int = 10  # seconds between a running trial's heartbeats
    grace: int = 60  # seconds without a heartbeat before a trial counts as dead
    max_retry: int = 3  # retries of a trial whose worker died
    poll: float = 2.0  # seconds between checks while waiting for other workers' trials
    train: dict[str, Any] = field(default_factory=dict)  # per-trial budget: TrainConfig fields (BUDGET_FIELDS)
    # Build every trial at the width (on a grid of 1/256) whose parameter count is closest to this budget,
    # so that architectures compete at one size; a trial more than 10% off it fails. None: train.width.
    match_params: int | None = None

    def validate(self) -> SearchConfig:
        if not self.study or any(c in self.study for c in "/\\\0"):
            raise SpecError(f"--study: {self.study!r} is not a usable study name")
        for name in ("trials", "workers", "startup_trials", "heartbeat", "grace", "reduction_factor"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise SpecError(f"--reduction-factor: must be >= 2, got {self.reduction_factor}")
        if self.max_retry < 0:
            raise SpecError(f"--max-retry: must be >= 0, got {self.max_retry}")
        for name in ("prune_every", "min_resource"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.grace <= self.heartbeat:
            raise SpecError(f"--grace: must exceed --heartbeat ({self.heartbeat} s), got {self.grace}")
        if self.pruner == "threshold" and self.prune_below is None:
            raise SpecError("--prune-below: the threshold pruner needs an accuracy to prune below")
        if self.match_params is not None:
            if self.match_params < 1:
                raise SpecError(f"--match-params: must be >= 1, got {self.match_params}")
            if self.train.get("width") is not None:
                raise SpecError("--match-params: each trial's width is chosen to match it; leave --width unset")
        for name in self.train:
            if name not in BUDGET_FIELDS:
                raise SpecError(f"train.{name}: not a per-trial budget setting (known: {', '.join(BUDGET_FIELDS)})")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / "search" / self.study

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.out_dir / 'study.db'}"

    @property
    def pruning(self) -> bool:
        """Optuna prunes single-objective studies only."""
        return self.pruner != "none" and self.objective == "accuracy"

    def semantic(self, space: SearchSpace) -> dict[str, Any]:
        """What a trial's result depends on: a study must be continued with the same."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NON_SEMANTIC}
        out["space"] = space.data
        out["train"] = {k: v for k, v in self.train.items() if k not in NON_SEMANTIC_TRAIN}
        if not self.pruning:
            for name in ("pruner", "min_resource", "reduction_factor", "prune_below"):
                out.pop(name)
        return out


class StudyError(RuntimeError):
    """The study cannot be run as asked; the message says why."""


# --- storage ------------------------------------------------------------------------------------------


def storage_url(url: str) -> str:
    """``url`` with a PostgreSQL driver that is installed (``postgresql://`` means psycopg2 to SQLAlchemy)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        rest = url.split("://", 1)[1]
        if importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        if importlib.util.find_spec("psycopg") is not None:
            return f"postgresql+psycopg://{rest}"
        raise StudyError("--storage: PostgreSQL needs a driver: pip install 'convrnn[postgres]'")
    return url


def shown(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def make_storage(cfg: SearchConfig, *, heartbeat: bool = True) -> Any:
    """An ``optuna.storages.RDBStorage`` for the study's URL, with heartbeats and retries."""
    import optuna
    from optuna.storages import RDBStorage

    url = storage_url(cfg.storage_url)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        engine["connect_args"] = {"timeout": 60}  # several writers: wait for the lock, not fail
    else:
        engine["pool_pre_ping"] = True  # a server may drop idle connections during a long trial
    kw: dict[str, Any] = {}
    if heartbeat:
        retry = retry_callback(cfg)
        # Optuna renamed the callback argument (4.9); take whichever this version has.
        name = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage.__init__).parameters
            else "failed_trial_callback"
        )
        kw = {"heartbeat_interval": cfg.heartbeat, "grace_period": cfg.grace, name: retry}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine, **kw)
    except ImportError as e:
        raise StudyError(f"--storage {shown(url)}: no database driver for it ({e.__cause__ or e})") from None
    except Exception as e:  # sqlalchemy's errors: a bad URL, an unreachable server, a locked file...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StudyError(f"--storage {shown(url)}: cannot open it ({first})") from None


def retry_callback(cfg: SearchConfig) -> Any:
    """Optuna's callback that queues a copy of a failed trial (renamed in Optuna 4.9)."""
    import optuna.storages as st

    cls = getattr(st, "RetryHeartbeatStaleTrialCallback", None) or st.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental in every Optuna version so far
        return cls(max_retry=cfg.max_retry, inherit_intermediate_values=True)


def quiet_optuna() -> None:
    """Our own one line per trial instead of Optuna's log; no warnings about the heartbeat we run ourselves."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with a heartbeat storage warns that heartbeats belong to Study.optimize; we beat in _Heartbeat.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def directions(cfg: SearchConfig) -> list[str]:
    return ["maximize"] if cfg.objective == "accuracy" else ["maximize", "minimize"]


def make_sampler(cfg: SearchConfig, seed: int | None) -> Any:
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Multivariate TPE (the paper searched with hyperopt's TPE); constant liar keeps workers apart.
        return optuna.samplers.TPESampler(
            n_startup_trials=cfg.startup_trials, multivariate=True, constant_liar=True, seed=seed
        )


def sampler_seed(seed: int, worker: int, known_trials: int) -> int:
    """The sampler's seed for worker ``worker`` joining a study of ``known_trials`` trials.

    Parallel workers must not propose the same trials, nor must a resumed study replay the random
    start-up draws of its first run; a fresh study's first worker always gets the same seed, so a
    one-worker search is reproducible.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, known_trials]).generate_state(1)[0])


def make_pruner(cfg: SearchConfig, first_report: int, total_steps: int) -> Any:
    """The pruner; resources are optimizer steps, the first rung at ``min_resource`` (or the first report)."""
    import optuna

    if not cfg.pruning:
        return optuna.pruners.NopPruner()
    low = cfg.min_resource or first_report
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=low, max_resource=max(total_steps, low), reduction_factor=cfg.reduction_factor
        )
    if cfg.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=cfg.reduction_factor)
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=low)
    return optuna.pruners.ThresholdPruner(lower=cfg.prune_below, n_warmup_steps=low)


def open_study(cfg: SearchConfig, space: SearchSpace, *, sampler: Any = None, pruner: Any = None) -> Any:
    """Create the study, or load it and check it was made with the same space and budget."""
    import optuna

    quiet_optuna()

    storage = make_storage(cfg)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.study,
        directions=directions(cfg),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    mine = _plain(cfg.semantic(space))
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", mine)
    elif stored != mine:
        diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        for k in ("train", "space"):
            if k in diff and isinstance(stored.get(k), dict) and isinstance(mine.get(k), dict):
                sub = sorted(j for j in set(stored[k]) | set(mine[k]) if stored[k].get(j) != mine[k].get(j))
                diff[diff.index(k)] = ", ".join(f"{k}.{j}" for j in sub) or k
        raise StudyError(
            f"--study {cfg.study}: the study in {shown(cfg.storage_url)} was made with other settings "
            f"(differs in {', '.join(diff)}); run it with those, or choose another --study name"
        )
    return study


def _plain(x: Any) -> Any:
    """JSON-equal form (tuples as lists), so stored and fresh settings compare equal."""
    import json

    return json.loads(json.dumps(x))


# --- the worker ----------------------------------------------------------------------------------------


class _Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds, in a thread.

    It also notices when the trial stopped being RUNNING behind this worker's back (another worker
    took it for dead after a long stall), so training can stop instead of finishing a trial twice.
    """

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from optuna.trial import TrialState

        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
                if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
                    self.lost.set()
                    return
            except Exception as e:  # a database hiccup: try again next beat, say so
                print(f"heartbeat of trial id {self.trial_id}: {e}", file=sys.stderr)


def _counts(study: Any) -> tuple[int, int]:
    """(finished, running) trials: finished = COMPLETE + PRUNED."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def _skip_reason(study: Any, number: int, target: int) -> str | None:
    """Why the trial just asked for must not run: a surplus trial or a second copy of a retry."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    mine = next(t for t in trials if t.number == number)
    history = mine.system_attrs.get("retry_history")
    if history:
        for t in trials:
            if t.number < number and t.system_attrs.get("retry_history") == history and "skipped" not in t.user_attrs:
                return f"duplicate of trial {t.number}"
    occupied = sorted(
        t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    if occupied.index(number) >= target:
        return "surplus"
    return None


def _requeue(study: Any, frozen: Any) -> None:
    """Queue a trial again with its parameters and retry history (for a surplus queued trial)."""
    import optuna

    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=frozen.params,
            distributions=frozen.distributions,
            user_attrs={k: v for k, v in frozen.user_attrs.items() if k != "skipped"},
            system_attrs=frozen.system_attrs,
            intermediate_values=frozen.intermediate_values,
        )
    )


def _fail_stale(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_worker(cfg: SearchConfig, index: int = 0, log=print) -> int:
    """One worker: pull and train trials until the study holds ``cfg.trials`` finished ones.

    Returns the number of trials this worker finished (COMPLETE or PRUNED).
    """
    from optuna.trial import TrialState

    from convrnn.search.objective import TrialInterrupted, TrialRunner
    from convrnn.train.trainer import TrainingError

    cfg.validate()
    quiet_optuna()
    space = SearchSpace.load(cfg.space)
    runner = TrialRunner(cfg, space)
    pruner = make_pruner(cfg, runner.first_report, runner.total_steps)
    study = open_study(cfg, space, pruner=pruner)
    study.sampler = make_sampler(
        cfg, sampler_seed(cfg.train.get("seed", 0), index, len(study.get_trials(deepcopy=False)))
    )
    storage = study._storage  # the RDB storage (heartbeats, trial states)
    retry = retry_callback(cfg)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    finished = errors = 0
    last_wait = ""
    while True:
        _fail_stale(study)
        done, running = _counts(study)
        if done >= cfg.trials:
            return finished
        if done + running >= cfg.trials:
            msg = f"worker {index}: {done} of {cfg.trials} trials finished, waiting for {running} running"
            if msg != last_wait:
                log(msg)
                last_wait = msg
            time.sleep(cfg.poll)
            continue
        trial = study.ask()
        tid = trial._trial_id
        storage.record_heartbeat(tid)  # from now on a crash here makes the trial stale, hence retried
        reason = _skip_reason(study, trial.number, cfg.trials)
        if reason is not None:
            frozen = storage.get_trial(tid)
            trial.set_user_attr("skipped", reason)
            study.tell(trial, state=TrialState.FAIL)
            if reason == "surplus" and frozen.system_attrs.get("retry_history"):
                _requeue(study, frozen)
            continue
        trial.set_user_attr("worker", worker)
        frozen = storage.get_trial(tid)
        try:
            with _Heartbeat(storage, tid, cfg.heartbeat) as beat:
                values, state, note = runner.run(trial, frozen, lost=beat.lost)
        except TrialInterrupted:
            log(f"trial {trial.number}: another worker took it for dead; leaving it to its retry")
            continue
        except (KeyboardInterrupt, SystemExit):
            # Stopped from outside: close the trial and queue its retry now, for the next run.
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            retry(study, storage.get_trial(tid))
            raise
        except (TrainingError, SpecError) as e:
            # Training stopped with an error (a diverged loss is PRUNED in the objective instead): FAIL.
            errors += 1
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            log(f"trial {trial.number}: failed: {e}")
            if errors >= max(5, cfg.trials):
                raise StudyError(f"{errors} trials failed in this worker; the last: {e}") from None
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        told = study.tell(trial, values if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        if told.state != state:  # failed as stale while its last evaluation ran: its retry counts instead
            log(f"trial {trial.number}: another worker took it for dead; its retry runs it")
            continue
        finished += 1
        log(f"trial {trial.number}: {note}")


def _worker_process(cfg: SearchConfig, index: int) -> None:
    """Entry point of a spawned worker process."""
    from convrnn.train.trainer import TrainingError

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_worker(cfg, index, log=lambda m: print(m, flush=True))
    except KeyboardInterrupt:
        sys.exit(130)
    except (StudyError, ValueError, OSError, TrainingError) as e:  # bad input: one line, as the CLI does
        print(f"convrnn: worker {index}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_search(cfg: SearchConfig, log=print) -> dict[str, int]:
    """Run the study to ``cfg.trials`` finished trials with ``cfg.workers`` local worker processes.

    Returns the study's trial counts by state. With one worker it runs in this process; with more,
    each is a separate process (torch with one thread each unless ``train.threads`` says otherwise)
    and this one only supervises: a worker that dies leaves its trial to the others' retry.
    """
    cfg.validate()
    space = SearchSpace.load(cfg.space)
    study = open_study(cfg, space)  # create it (and its tables) once, before workers race for it
    if cfg.workers == 1:
        main = threading.current_thread() is threading.main_thread()
        # SIGTERM as SystemExit: the running trial is closed and queued for retry, as with Ctrl-C.
        prev = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) if main else None
        try:
            run_worker(cfg, 0, log=log)
        finally:
            if main:
                signal.signal(signal.SIGTERM, prev)
        return state_counts(study)
    import multiprocessing as mp

    # One torch thread per worker unless asked otherwise: N workers share the machine's cores.
    wcfg = dataclasses.replace(cfg, train={**cfg.train, "threads": cfg.train.get("threads") or 1})
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_process, args=(wcfg, i), name=f"convrnn-search-{i}") for i in range(cfg.workers)
    ]

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    prev = signal.signal(signal.SIGTERM, forward)
    try:
        for p in procs:
            p.start()
        log(f"{cfg.workers} workers: pids {', '.join(str(p.pid) for p in procs)}")
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # the terminal sent SIGINT to every worker too; let them close their trials
            p.join()
        raise
    finally:
        signal.signal(signal.SIGTERM, prev)
    for i, p in enumerate(procs):
        if p.exitcode:
            how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"code {p.exitcode}"
            log(f"worker {i} (pid {p.pid}) exited with {how}")
    return state_counts(study)


def state_counts(study: Any) -> dict[str, int]:
    """Trials of the study by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
