"""``convrnn search``: the architecture search command and its ``report`` verb.

convrnn search --study NAME [--space FILE] [--storage URL] [--trials N] [--workers N] [budget flags]
convrnn search report STUDY [--storage URL] [--out DIR] [--top K] [--export-best K DIR]

Re-running the same ``search`` command continues the study until it holds ``--trials`` finished
trials. :func:`add_parser` registers both on the ``convrnn`` command's sub-parsers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from convrnn.search.study import BUDGET_FIELDS, SearchConfig

# The per-trial budget: `convrnn train`'s flags for data and scale; the search's own defaults where
# TrainConfig's (a full-width model, 10 epochs) would make every trial long.
BUDGET_DEFAULTS: dict[str, Any] = {"width": 0.25, "epochs": 3}


def _budget_flags(p: argparse.ArgumentParser) -> None:
    import dataclasses
    import typing

    from convrnn.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | BUDGET_DEFAULTS
    g = p.add_argument_group("per-trial training budget (as `convrnn train`)")
    for name in BUDGET_FIELDS:
        flag = "--data-workers" if name == "workers" else "--" + name.replace("_", "-")
        tp = hints[name]
        args = typing.get_args(tp)
        if tp is bool:
            g.add_argument(flag, dest=f"train_{name}", action=argparse.BooleanOptionalAction, default=defaults[name])
            continue
        base = next((a for a in args if a is not type(None)), tp)
        default = 0 if name == "workers" else defaults[name]
        g.add_argument(flag, dest=f"train_{name}", type=base, default=default, metavar=name.upper())


def add_parser(sub: Any) -> None:
    """Register ``search`` (and ``search report``) on the ``convrnn`` sub-parsers."""
    s = sub.add_parser(
        "search",
        help="architecture search: TPE over RGC cells and feedback, pruning, many workers on one database",
        description="Search RGC cells, long-range feedback and optimiser settings with Optuna. "
        "Re-running the same command continues the study.",
    )
    s.add_argument("--study", help="study name (required to search)")
    s.add_argument("--space", type=Path, help="search space YAML/JSON (default: the shipped paper space)")
    s.add_argument(
        "--storage", help="database URL (default sqlite:///<out>/study.db; postgresql://... for many machines)"
    )
    s.add_argument("--out", help="folder of the trials' run folders (default runs/search/<study>)")
    s.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default 20)")
    s.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    s.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="multivariate TPE (default) or random")
    s.add_argument("--startup-trials", type=int, default=10, help="TPE: random trials first (default 10)")
    s.add_argument(
        "--pruner",
        choices=("halving", "hyperband", "median", "threshold", "none"),
        default="halving",
        help="successive halving (default), Hyperband, median, threshold or none (docs/search.md)",
    )
    s.add_argument("--prune-every", type=int, help="evaluate and report every N optimizer steps (default: each epoch)")
    s.add_argument("--min-resource", type=int, help="optimizer steps before a trial may be pruned")
    s.add_argument(
        "--reduction-factor", type=int, default=4, help="halving/hyperband: keep 1 in N per rung (default 4)"
    )
    s.add_argument("--prune-below", type=float, help="threshold pruner: stop trials below this top-1 accuracy")
    s.add_argument(
        "--objective",
        choices=("accuracy", "accuracy-size"),
        default="accuracy",
        help="accuracy-size: maximise accuracy and minimise parameters (no pruning)",
    )
    s.add_argument("--heartbeat", type=int, default=10, help="seconds between a trial's heartbeats (default 10)")
    s.add_argument("--grace", type=int, default=60, help="seconds without a heartbeat before a trial is retried")
    s.add_argument("--max-retry", type=int, default=3, help="retries of a trial whose worker died (default 3)")
    s.add_argument(
        "--match-params",
        type=int,
        help="build every trial at the width whose parameter count is closest to N (replaces --width)",
    )
    _budget_flags(s)
    s.set_defaults(fn=cmd_search)

    verbs = s.add_subparsers(dest="search_verb", metavar="report")
    r = verbs.add_parser("report", help="best trials, Pareto front, plots; --export-best K DIR writes spec files")
    r.add_argument("study", help="study name")
    r.add_argument("--storage", help="database URL (default sqlite:///runs/search/<study>/study.db)")
    r.add_argument("--out", type=Path, help="folder for trials.csv and the PNGs (default runs/search/<study>/report)")
    r.add_argument("--top", type=int, default=10, help="rows of the best-trials table (default 10)")
    r.add_argument("--export-best", nargs=2, metavar=("K", "DIR"), help="write the K best architectures as spec YAML")
    r.add_argument("--no-plots", action="store_true", help="tables only")
    r.set_defaults(fn=cmd_report)


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    if not args.study:
        raise ValueError("search: --study NAME is required")
    train = {name: getattr(args, f"train_{name}") for name in BUDGET_FIELDS}
    if args.match_params is not None:
        if train["width"] != BUDGET_DEFAULTS["width"]:
            raise ValueError("search: --match-params chooses each trial's width; drop --width")
        train["width"] = None
    return SearchConfig(
        study=args.study,
        space=str(args.space) if args.space else None,
        storage=args.storage,
        out=args.out,
        trials=args.trials,
        workers=args.workers,
        sampler=args.sampler,
        startup_trials=args.startup_trials,
        pruner=args.pruner,
        prune_every=args.prune_every,
        min_resource=args.min_resource,
        reduction_factor=args.reduction_factor,
        prune_below=args.prune_below,
        objective=args.objective,
        heartbeat=args.heartbeat,
        grace=args.grace,
        max_retry=args.max_retry,
        match_params=args.match_params,
        train=train,
    ).validate()


def cmd_search(args: argparse.Namespace) -> int:
    from convrnn.search.report import best_rows, format_table, load_study
    from convrnn.search.study import StudyError, run_search

    cfg = config_from_args(args)
    if cfg.objective != "accuracy" and cfg.pruner != "none":
        print("note: the accuracy-size objective has two values; Optuna prunes single-objective studies only")
    try:
        counts = run_search(cfg, log=lambda m: print(m, flush=True))
    except StudyError as e:
        raise ValueError(str(e)) from None
    done = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    study = load_study(cfg.study, cfg.storage_url)
    print(f"study {cfg.study}: {done} of {cfg.trials} trials finished ({_counts(counts)})")
    best = best_rows(study, 5)
    if best:
        print(format_table(best))
    print(f"report: convrnn search report {cfg.study}" + (f" --storage {cfg.storage}" if cfg.storage else ""))
    if done < cfg.trials:
        print("the study is not finished: re-run the same command to continue", file=sys.stderr)
        return 1
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials"


def cmd_report(args: argparse.Namespace) -> int:
    from convrnn.search.report import (
        best_rows,
        export_best,
        format_table,
        load_study,
        param_importances,
        pareto_front,
        summary,
        trial_rows,
        write_report,
    )
    from convrnn.search.study import StudyError

    storage = args.storage or SearchConfig(study=args.study).storage_url
    if args.storage is None and not Path(storage[len("sqlite:///") :]).is_file():
        raise ValueError(f"study {args.study!r}: no {storage[len('sqlite:///') :]}; give --storage URL")
    try:
        study = load_study(args.study, storage)
    except StudyError as e:
        raise ValueError(str(e)) from None
    info = summary(study)
    print(f"study {args.study}: {_counts(info['counts'])}; {info['steps']:,} optimizer steps of training")
    best = best_rows(study, args.top)
    print(f"\nbest {len(best)} trials (validation top-1 of the readout):")
    print(format_table(best) if best else "  none completed yet")
    front = pareto_front(trial_rows(study))
    if front:
        print("\nPareto front (accuracy vs trainable parameters):")
        print(format_table(front))
    importances = param_importances(study)
    if importances:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(importances.items())[:8])
        print(f"\nmost important parameters (fANOVA, for accuracy): {top}")
    if not args.no_plots:
        out = args.out or (
            Path(storage[len("sqlite:///") :]).parent / "report"
            if storage.startswith("sqlite:///")
            else Path("runs") / "search" / args.study / "report"
        )
        files = write_report(study, out, importances)
        print(f"\nwrote {', '.join(p.name for p in files)} in {out}")
    if args.export_best:
        k_text, folder = args.export_best
        try:
            k = int(k_text)
        except ValueError:
            raise ValueError(f"--export-best: K must be a number, got {k_text!r}") from None
        files = export_best(study, k, folder)
        specs = [p for p in files if p.suffix == ".yaml"]
        print(f"exported {len(specs)} architectures to {folder}: {', '.join(p.name for p in specs)}")
    return 0
