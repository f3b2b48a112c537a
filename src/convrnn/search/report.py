"""What a study found: best trials, the accuracy-size Pareto front, plots, and the best specs as files.

Everything here reads the study's database only (each trial's user attributes hold its spec,
accuracy, parameter count and steps), so a report needs no training and works while a study runs.

- :func:`trial_rows`: one row per trial; :func:`best_rows`: finished trials, most accurate first.
- :func:`pareto_front`: completed trials no other beats on both accuracy and parameter count
  (the 2022 paper's performance-size trade-off); computed for single-objective studies too.
- :func:`write_report`: ``trials.csv`` and PNGs (optimisation history, parameter importances,
  intermediate accuracies with the pruned trials, accuracy against parameters with the front).
- :func:`export_best`: the top K architectures as spec YAML files that ``ModelSpec.load`` /
  ``convrnn.create_model`` accept, their measured accuracy and size in a header comment and in a
  JSON sidecar, and their trained weights where the trial's run folder is on this machine.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrnn.files import save_figure, write_text
from convrnn.spec import ModelSpec


@dataclass
class TrialRow:
    """One trial as the report shows it."""

    number: int
    state: str
    accuracy: float | None
    parameters: int | None
    steps: int | None
    feedback: list[str] = field(default_factory=list)  # "conv5->conv3@out"
    retry_of: int | None = None
    seconds: float | None = None
    note: str = ""


def load_study(name: str, storage: str) -> Any:
    """The study ``name`` in ``storage`` (a URL), without joining it as a worker."""
    import optuna

    from convrnn.search.study import SearchConfig, StudyError, make_storage, quiet_optuna

    quiet_optuna()
    rdb = make_storage(SearchConfig(study=name, storage=storage), heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
        raise StudyError(f"study {name!r}: not in {storage} (studies there: {', '.join(known) or 'none'})") from None


def trial_rows(study: Any) -> list[TrialRow]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        acc = ua.get("accuracy")
        if acc is None and t.state.name == "PRUNED" and t.intermediate_values:
            acc = t.intermediate_values[max(t.intermediate_values)]  # the accuracy it was pruned at
        fb = [k.split(".", 1)[1] for k, v in t.params.items() if k.startswith("feedback.") and v is True]
        spec = ua.get("spec")
        if spec is not None:  # the edges as built (entries after the space's mapping)
            fb = [
                f"{e['source']}->{e['target']}@{e['entry']}" for e in spec.get("edges", []) if e["kind"] == "feedback"
            ]
        secs = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        note = (
            ua.get("skipped")
            or ua.get("error")
            or ua.get("diverged")
            or ("interrupted" if ua.get("interrupted") else "")
        )
        rows.append(
            TrialRow(
                t.number,
                t.state.name,
                acc,
                ua.get("parameters"),
                ua.get("steps"),
                fb,
                t.system_attrs.get("failed_trial"),
                secs,
                str(note),
            )
        )
    return rows


def best_rows(study: Any, k: int | None = None) -> list[TrialRow]:
    """Completed trials, most accurate first (fewer parameters first among equals)."""
    done = [r for r in trial_rows(study) if r.state == "COMPLETE" and r.accuracy is not None]
    done.sort(key=lambda r: (-r.accuracy, r.parameters or 0, r.number))
    return done if k is None else done[:k]


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Rows no other row beats on both accuracy (higher) and parameters (fewer); fewest parameters first."""
    pts = [r for r in rows if r.state == "COMPLETE" and r.accuracy is not None and r.parameters is not None]
    front = []
    for r in pts:
        beaten = any(
            o.accuracy >= r.accuracy
            and o.parameters <= r.parameters
            and (o.accuracy, o.parameters) != (r.accuracy, r.parameters)
            for o in pts
        )
        if not beaten:
            front.append(r)
    front.sort(key=lambda r: (r.parameters, -r.accuracy))
    return front


def summary(study: Any) -> dict[str, Any]:
    """Trial counts by state and the optimizer steps spent (the search's training compute)."""
    rows = trial_rows(study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    steps = sum(r.steps or 0 for r in rows if r.state in ("COMPLETE", "PRUNED"))
    return {"counts": counts, "steps": steps, "settings": study.user_attrs.get("search", {})}


def format_table(rows: list[TrialRow]) -> str:
    head = f"{'trial':>5s} {'top-1 %':>8s} {'parameters':>11s} {'steps':>6s}  feedback"
    lines = [head]
    for r in rows:
        acc = f"{100 * r.accuracy:8.2f}" if r.accuracy is not None else f"{'-':>8s}"
        params = f"{r.parameters:11,d}" if r.parameters is not None else f"{'-':>11s}"
        steps = f"{r.steps:6d}" if r.steps is not None else f"{'-':>6s}"
        lines.append(f"{r.number:5d} {acc} {params} {steps}  {', '.join(r.feedback) or 'none'}")
    return "\n".join(lines)


def write_report(study: Any, out: str | Path, importances: dict[str, float] | None = None) -> list[Path]:
    """``trials.csv`` and the PNGs into ``out``; returns the files written (a plot that cannot be made
    yet, e.g. importances before two trials completed, is left out). ``importances``: already computed
    :func:`param_importances`, to save computing them again."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    written = [_write_csv(rows, out / "trials.csv")]
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    done = [r for r in rows if r.state == "COMPLETE"]
    if done:  # first: Optuna's plots switch matplotlib to their own style
        written.append(_plot_pareto(rows, out / "pareto.png", study.study_name))
    plots = {"history.png": lambda: ovm.plot_optimization_history(study, target=target, target_name="top-1 accuracy")}
    if not multi:
        plots["intermediate.png"] = lambda: ovm.plot_intermediate_values(study)
    for name, make in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
            ax = make()
        written.append(save_figure(ax.figure, out / name, dpi=110))
        plt.close(ax.figure)
    importances = param_importances(study) if importances is None else importances
    if importances:
        written.append(_plot_importances(importances, out / "importances.png", study.study_name))
    return written


def param_importances(study: Any, top: int | None = None) -> dict[str, float]:
    """fANOVA importances of the searched parameters for accuracy (empty before two completed trials)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            imp = optuna.importance.get_param_importances(study, target=target)
        except (ValueError, RuntimeError):  # e.g. no parameter varied across the completed trials
            return {}
    items = sorted(imp.items(), key=lambda kv: -kv[1])
    return dict(items if top is None else items[:top])


def _plot_importances(imp: dict[str, float], path: Path, title: str, top: int = 20) -> Path:
    import matplotlib.pyplot as plt

    items = list(imp.items())[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set(xlabel="importance for accuracy (fANOVA)", title=f"{title}: the {len(items)} most important parameters")
    ax.tick_params(axis="y", labelsize=7)
    return save_figure(fig, path, dpi=110)


def _plot_pareto(rows: list[TrialRow], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.state == "COMPLETE" and r.accuracy is not None and r.parameters is not None]
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.scatter(
        [r.parameters for r in pts], [100 * r.accuracy for r in pts], s=14, alpha=0.5, color="tab:blue", label="trials"
    )
    ax.plot(
        [r.parameters for r in front],
        [100 * r.accuracy for r in front],
        "o-",
        color="tab:red",
        ms=5,
        label="Pareto front",
    )
    for r in front:
        ax.annotate(
            str(r.number), (r.parameters, 100 * r.accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="top-1 accuracy (%)", title=f"{title}: accuracy vs size")
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=110)


def _write_csv(rows: list[TrialRow], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", "accuracy", "parameters", "steps", "feedback", "retry_of", "seconds", "note"])
        for r in rows:
            w.writerow(
                [
                    r.number,
                    r.state,
                    r.accuracy,
                    r.parameters,
                    r.steps,
                    " ".join(r.feedback),
                    r.retry_of,
                    r.seconds,
                    r.note,
                ]
            )
    tmp.replace(path)
    return path


def export_best(study: Any, k: int, out: str | Path) -> list[Path]:
    """Write the ``k`` most accurate completed trials as ``<study>-trial<N>.yaml`` spec files.

    Each YAML starts with comment lines giving the measured accuracy and parameter count (comments
    leave ``ModelSpec.load`` unaffected); ``<name>.json`` beside it holds the same numbers, the
    trial's parameters and training settings for scripts; ``<name>.safetensors`` holds the trained
    weights where the trial's run folder is on this machine (``create_model(spec, weights=...)``).
    """
    if k < 1:
        raise ValueError(f"--export-best: K must be >= 1, got {k}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    settings = study.user_attrs.get("search", {})
    written: list[Path] = []
    for rank, row in enumerate(best_rows(study, k), start=1):
        t = by_number[row.number]
        spec = ModelSpec.from_dict(t.user_attrs["spec"]).validate()
        spec.name = f"{study.study_name}-trial{row.number:05d}"
        base = out / spec.name
        weights = None
        src = Path(t.user_attrs.get("run_dir", "")) / "final" / "model.safetensors"
        if t.user_attrs.get("run_dir") and src.is_file():
            weights = base.with_suffix(".safetensors")
            tmp = weights.with_name(f".{weights.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(weights)
        header = (
            f"# convrnn search: study {study.study_name!r}, trial {row.number} (rank {rank} of the export)\n"
            f"# measured top-1 accuracy: {row.accuracy:.4f} on the search's validation data after {row.steps} steps\n"
            f"# trainable parameters: {row.parameters}\n"
        )
        write_text(base.with_suffix(".yaml"), header + spec.to_yaml())
        meta = {
            "study": study.study_name,
            "trial": row.number,
            "rank": rank,
            "accuracy": row.accuracy,
            "parameters": row.parameters,
            "steps": row.steps,
            "params": t.params,
            "train": {**settings.get("train", {}), **t.user_attrs.get("train", {})},
            "spec": base.with_suffix(".yaml").name,
            "weights": weights.name if weights is not None else None,
        }
        write_text(base.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        written += [base.with_suffix(".yaml"), base.with_suffix(".json")] + ([weights] if weights else [])
    return written


__all__ = [
    "TrialRow",
    "best_rows",
    "export_best",
    "format_table",
    "load_study",
    "param_importances",
    "pareto_front",
    "summary",
    "trial_rows",
    "write_report",
]
