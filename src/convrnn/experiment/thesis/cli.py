"""``convrnn experiment thesis``: plan, run what is missing, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from convrnn.errors import SpecError
from convrnn.experiment.cells import ExperimentError

__all__ = ["add_subcommand"]


def add_subcommand(sub: Any) -> None:
    """Register ``thesis`` on the ``convrnn experiment`` sub-parsers."""
    p = sub.add_parser(
        "thesis",
        help="searched ConvRNNs vs tuned, parameter-matched feedforward nets, trained to a plateau (docs/results.md)",
        description="The papers' central comparison at laptop scale: every arm matched to one parameter budget, "
        "its optimiser tuned on the same candidate settings, the RGC cell and feedback found by TPE search, "
        "final runs trained until validation accuracy plateaus, scored on a held-out test set per time step "
        "and per image. Resumable: finished tasks are never run again.",
    )
    p.add_argument(
        "--quick", action="store_true", help="the whole pipeline on a tiny scale: a smoke test, not a result"
    )
    p.add_argument("--out", type=Path, help="results folder (default runs/experiments/thesis[-quick])")
    p.add_argument("--protocol", type=Path, help="a protocol JSON file (default: the built-in protocol)")
    p.add_argument("--jobs", type=int, default=2, help="tasks run side by side (processes; default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per task (default 1)")
    p.add_argument("--only", choices=("tune", "search", "final"), help="run tasks of this kind only")
    p.add_argument("--plan", action="store_true", help="print the arms, their sizes, step times and planned cost")
    p.add_argument("--report", action="store_true", help="only write the report from what has finished")
    p.add_argument("--docs", type=Path, help="also write the report into this markdown file's generated section")
    p.set_defaults(fn=cmd_thesis)


def _protocol(args: argparse.Namespace) -> Any:
    from convrnn.experiment.thesis.protocol import DEFAULT, QUICK, Protocol

    if args.protocol is None:
        return QUICK if args.quick else DEFAULT
    try:
        data = json.loads(args.protocol.read_text())
    except OSError as e:
        raise ExperimentError(f"--protocol: cannot read {str(args.protocol)!r} ({e.strerror or e})") from None
    except ValueError as e:
        raise ExperimentError(f"--protocol: {str(args.protocol)!r} is not JSON ({e})") from None
    return Protocol.from_dict(data)


def cmd_thesis(args: argparse.Namespace) -> int:
    from convrnn.experiment.thesis import plan as planning
    from convrnn.experiment.thesis import report, run

    out = args.out or Path("runs/experiments/thesis-quick" if args.quick else "runs/experiments/thesis")
    try:
        p = _protocol(args)
        if args.plan:
            arms = planning.plan_arms(p)
            seconds = {a.name: planning.step_seconds(a.spec, p) for a in arms if a.spec is not None}
            target = planning.budget(p)
            print(f"budget: {target:,} parameters (rgc_shallow at width {p.base_width:g}), {p.image_size} px")
            print(planning.plan_table(arms, seconds))
            hours = planning.cost_hours(arms, p, seconds)
            total = sum(hours.values())
            print(
                "planned CPU hours at most (final runs to the cap, search unpruned, evaluation not counted): "
                + ", ".join(f"{k} {v:.1f}" for k, v in hours.items())
                + f"; total {total:.1f} (about {total / max(1, args.jobs):.1f} h on {args.jobs} cores)"
            )
            if out.exists():
                s = run.spent(out)
                print(f"spent so far in {out}: {s['cpu_s'] / 3600:.2f} CPU h; {len(run.pending(out, p))} task(s) ready")
            return 0
        errors: list[str] = []
        if not args.report:
            errors = run.run(
                p, out, jobs=args.jobs, threads=args.threads, only=args.only, log=lambda m: print(m, flush=True)
            )
        files = report.report(out, docs=args.docs)
        print(f"report: {out / 'report' / 'results.md'} ({len(files)} files)")
        if errors:
            print(f"convrnn: {len(errors)} task(s) failed; first: {errors[0]}", file=sys.stderr)
            return 1
    except (ExperimentError, SpecError) as e:
        print(f"convrnn: {e}", file=sys.stderr)
        return 2
    return 0
