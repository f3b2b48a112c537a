"""``convrnn experiment cells``: parameter matching, the training loop over runs, resuming, the report."""

from __future__ import annotations

import csv
import json

import pytest

from convrnn.cli import main
from convrnn.data import fashion
from convrnn.experiment import cells
from convrnn.experiment.cells import ExperimentError, Scale, build_spec, count_params, match_width, plan, report, run
from convrnn.spec import Conv
from convrnn.zoo.sizing import WIDTH_GRID

# Smaller than --quick, through the same code path: 64 training images, one epoch of 4 steps.
TINY = Scale(
    image_size=32, base_width=0.125, times=7, train_size=64, val_size=32, epochs=1, batch_size=16, warmup_steps=1
)


def _have_fashion() -> bool:
    try:
        fashion.fashion_files("train")
        fashion.fashion_files("test")
    except FileNotFoundError:
        return False
    return True


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path / "cache"))


def test_every_matched_model_is_within_tolerance_and_built_as_described():
    planned = {p.model: p for p in plan(TINY, flops=False)}
    assert list(planned) == list(cells.MODELS)
    target = count_params(build_spec("rgc", TINY.base_width, TINY))
    assert planned["rgc"].params == target and planned["rgc"].width == TINY.base_width
    assert planned["ff"].width == TINY.base_width and planned["ff"].params < target / 2
    for name, p in planned.items():
        assert p.target == target and p.params == count_params(p.spec)
        if name != "ff":
            assert abs(p.params / target - 1) <= cells.TOLERANCE, (name, p.params, target)
    # The wider FF is the plain FF spec at a larger width; the deeper one has 2 extra convs in conv3-conv5.
    assert planned["ff_wide"].width > TINY.base_width
    deep = planned["ff_deep"].spec
    assert sum(isinstance(op, Conv) for layer in deep.layers for op in layer.pre) == 5 + 1 + 3 * cells.DEEP_EXTRA
    assert [layer.cell.type for layer in deep.layers] == [layer.cell.type for layer in planned["ff"].spec.layers]
    # rgc_fb is the RGC model plus the two long-range feedback edges, and nothing else.
    fb = planned["rgc_fb"].spec
    extra = [(e.source, e.target, e.kind) for e in fb.edges if e.kind != "feedforward"]
    assert extra == [("conv5", "conv3", "feedback"), ("conv4", "conv3", "feedback")]
    assert {layer.cell.type for layer in fb.layers[2:5]} == {"rgc"}


def test_match_width_finds_the_closest_count():
    def build(w):
        return build_spec("ff_wide", w, TINY)

    target = count_params(build(0.5))
    assert match_width(build, target, start=0.1) == (0.5, target)  # reached by doubling, then bisection
    assert match_width(build, target, start=2.0) == (0.5, target)  # from above
    width, params = match_width(build, target + 1, start=0.1)  # between two grid points: the closer one
    step = 1 / WIDTH_GRID
    below, above = count_params(build(0.5)), count_params(build(0.5 + step))
    assert (width, params) == min(((0.5, below), (0.5 + step, above)), key=lambda wp: abs(wp[1] - target - 1))


def test_bad_names_are_one_line_errors():
    with pytest.raises(ExperimentError, match=r"--models: unknown 'cnn'"):
        plan(TINY, ["ff", "cnn"], flops=False)
    with pytest.raises(ExperimentError, match="model 'cnn'"):
        build_spec("cnn", 0.25, TINY)
    with pytest.raises(ExperimentError, match=r"Scale\.times"):
        Scale(times=5)
    with pytest.raises(ExperimentError, match=r"Scale\.image_size"):
        Scale(image_size=128)
    with pytest.raises(ExperimentError, match=r"Scale\.clutter: .*unknown knob\(s\) debri;"):
        Scale(clutter="{debri: 3}")


def test_run_report_rerun_and_docs(tmp_path, monkeypatch):
    datasets = ["clutter", "clutter-fashion"] if _have_fashion() else ["clutter"]
    out = tmp_path / "res"
    models = ["ff", "rgc_fb"]
    logs: list[str] = []
    results = run(TINY, out, seeds=[0], models=models, datasets=datasets, jobs=1, log=logs.append)
    assert len(results) == len(models) * len(datasets)
    for r in results:
        folder = out / r["dataset"] / r["model"] / "seed0"
        assert (folder / "final" / "model.safetensors").is_file()
        assert len(r["top1_per_step"]) == TINY.times and 0 <= r["top1"] <= 1
        assert r["top1"] == r["top1_per_step"][-1]
        assert r["optimizer_steps"] == TINY.train_size // TINY.batch_size and r["n_val"] == TINY.val_size
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["mflop_per_image"] > 0
        config = (folder / "config.yaml").read_text()
        assert "optimizer: adamw" in config and f"data: '{r['dataset']}:{{distractors: 4" in config
    assert f"training {len(results)} (1 at a time)" in logs[-len(results) - 2]

    # A second call trains nothing: every run is finished.
    def no_training(job):
        raise AssertionError(f"trained {job.model} again")

    monkeypatch.setattr(cells, "_train_one", no_training)
    again = run(TINY, out, seeds=[0], models=models, datasets=datasets, jobs=1, log=logs.append)
    assert [r["top1"] for r in again] == [r["top1"] for r in results]
    assert f"{len(results)} of {len(results)} runs already finished" in logs[-2]

    # The report: tables, CSV, JSON and plots, from the run folders alone.
    docs = tmp_path / "results.md"
    docs.write_text(f"# Results\n\nintro\n\n{cells.MARK_BEGIN}\nold\n{cells.MARK_END}\n\ntail\n")
    files = report(out, docs=docs)
    rep = out / "report"
    for name in ("results.md", "summary.csv", "summary.json", "runs.csv", "accuracy_per_step_clutter.png"):
        assert (rep / name) in files and (rep / name).stat().st_size > 0
    assert (rep / "accuracy_vs_params_clutter.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((rep / "summary.json").read_text())
    assert {(r["dataset"], r["model"]) for r in rows} == {(d, m) for d in datasets for m in models}
    with open(rep / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == len(results) and f"top1_step{TINY.times - 1}" in runs[0]
    text = docs.read_text()
    assert text.startswith("# Results\n\nintro\n\n") and text.endswith(f"{cells.MARK_END}\n\ntail\n")
    assert "old" not in text and "| `rgc_fb` |" in text and "](results/accuracy_per_step_clutter.png)" in text
    assert (tmp_path / "results" / "accuracy_per_step_clutter.png").is_file()
    assert not list(tmp_path.rglob(".*.tmp*"))  # nothing half-written left behind


def test_parallel_jobs_and_a_failed_run_is_named(tmp_path):
    out = tmp_path / "res"
    # Occupy one run folder with a run of another configuration: the trainer refuses it, the others go on.
    bad = out / "clutter" / "ff" / "seed1"
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("model: ff_shallow\nepochs: 99\n")
    with pytest.raises(ExperimentError, match=r"1 run\(s\) failed; first: clutter/ff/seed1: TrainingError: .*seed1"):
        run(TINY, out, seeds=[0, 1], models=["ff"], datasets=["clutter"], jobs=2, log=lambda m: None)
    assert cells.is_finished(out / "clutter" / "ff" / "seed0")
    assert not cells.is_finished(bad)


def test_results_folder_holds_one_scale(tmp_path):
    (tmp_path / "scale.json").write_text(json.dumps(vars(TINY) | {"epochs": 2}))
    with pytest.raises(ExperimentError, match=r"holds results at another scale \(differs in epochs\)"):
        run(TINY, tmp_path, seeds=[0], models=["ff"], datasets=["clutter"], jobs=1)


def test_cli(tmp_path, capsys):
    assert main(["experiment", "cells", "--report", "--out", str(tmp_path)]) == 2
    assert "no finished runs to report" in capsys.readouterr().err
    assert main(["experiment", "cells", "--plan", "--quick", "--models", "ff", "rgc", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "target: 133,178 parameters (rgc at width 0.125), 32 px, 8 steps" in printed
    assert "| `rgc` | RGC (reciprocal gated) | 0.125 | 133,178 | +0.0% |" in printed
    assert "2 dataset(s) x 2 configuration(s) x 1 seed(s) = 4 runs;" in printed


def test_comparisons_pair_runs_by_seed():
    def res(model, seed, top1):
        return {"model": model, "seed": seed, "top1": top1}

    runs = [res("rgc", 0, 0.50), res("rgc", 1, 0.60), res("simplernn", 0, 0.40), res("simplernn", 1, 0.45)]
    runs += [res("simplernn", 2, 0.90), res("rgc_fb", 0, 0.55)]  # seed 2 has no rgc: left out of the pairs
    got = dict(cells.comparisons(runs))
    assert got["`rgc` − `simplernn`"] == pytest.approx([0.10, 0.15])
    assert got["`rgc_fb` − `rgc`"] == pytest.approx([0.05])
    assert "`rgc` − `lstm`" not in got  # no lstm run: the comparison is left out, not shown as empty
    # A tuple of models is their mean per seed.
    runs = [res(m, 0, 0.2 + 0.1 * i) for i, m in enumerate(cells.CELLS)] + [res("ff_wide", 0, 0.4)]
    runs.append(res("ff_deep", 0, 0.2))
    assert dict(cells.comparisons(runs))["mean of the 7 cells − mean of `ff_wide`, `ff_deep`"] == pytest.approx([0.2])


def test_without_the_garments_the_digits_still_run_and_the_skip_is_said(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVRNN_FASHION_MNIST", str(tmp_path / "nowhere"))
    out = tmp_path / "quick"
    assert main(["experiment", "cells", "--quick", "--models", "ff", "--seeds", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "note: skipping clutter-fashion: Fashion-MNIST: " in text and "not found" in text
    assert (out / "clutter" / "ff" / "seed0" / "result.json").exists() and not (out / "clutter-fashion").exists()
