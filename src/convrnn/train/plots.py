"""PNG plots of a run: training loss, and accuracy at every time step after each evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from convrnn.files import save_figure


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process: the run resumes past it
            continue
    return records


def plot_run(run: str | Path) -> list[Path]:
    """Write ``plots/loss.png`` and ``plots/accuracy_per_step.png``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run = Path(run)
    recs = _records(run)
    out_dir = run / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    train = [r for r in recs if r.get("event") == "train"]
    if train:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["step"] for r in train], [r["loss"] for r in train])
        ax.set(xlabel="optimizer step", ylabel="training loss", title=run.name)
        written.append(save_figure(fig, out_dir / "loss.png"))
    evals = [r for r in recs if r.get("event") == "eval"]
    if evals:
        written.append(plot_accuracy(evals, out_dir / "accuracy_per_step.png", title=run.name))
    return written


def plot_accuracy(evals: list[dict], path: Path, title: str = "", step_ms: float = 10.0) -> Path:
    """Top-1 accuracy against time (one curve per evaluation, the latest darkest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, r in enumerate(evals):
        top1 = r["top1_per_step"]
        alpha = 0.25 + 0.75 * (i + 1) / len(evals)
        label = f"step {r['step']}" if "step" in r else None
        ax.plot([t * step_ms for t in range(len(top1))], [100 * a for a in top1], alpha=alpha, label=label, marker=".")
    ax.set(xlabel="time after stimulus onset (ms)", ylabel="top-1 accuracy (%)", title=title)
    if len(evals) <= 8 and any("step" in r for r in evals):
        ax.legend(fontsize=7)
    return save_figure(fig, path)
