"""`convrnn search` as users run it: two worker processes on a real SQLite file, one killed with
SIGKILL mid-trial, resuming by re-running the command, and the report / export round trip."""

import contextlib
import io
import json
import os
import signal
import time

import pytest
from optuna.trial import TrialState
from safetensors.torch import load_file
from search_helpers import TINY, popen_cli, run_cli, search_args
from torch.utils.data import DataLoader

import convrnn
from convrnn.cli import main
from convrnn.search.report import load_study
from convrnn.train.data import build_datasets, collate
from convrnn.train.evaluate import evaluate

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A 3-trial study run by 2 worker processes on one SQLite file; one worker is killed with SIGKILL
    mid-trial (after its first evaluation and checkpoint, step 4 of 12)."""
    out = tmp_path_factory.mktemp("search") / "duo"
    url = f"sqlite:///{out / 'study.db'}"
    # No pruning: every trial completes (the export below takes the best two), and a trial pruned at
    # step 4 could finish before the kill lands. Pruning itself: test_study.py.
    args = search_args("duo", out, trials=3, workers=2, pruner="none", **{"checkpoint-every": 4})
    proc = popen_cli(args)
    victim = study = None
    deadline = time.time() + 180
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if study is None:
                try:
                    study = load_study("duo", url)
                except Exception:  # not created yet
                    continue
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if "worker" in t.user_attrs and t.user_attrs.get("steps", 0) >= 4:
                    victim = t
                    os.kill(int(t.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
                    break
        assert victim is not None, "no trial was seen running"
        stdout, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout
    return out, url, args, stdout, victim


def test_two_workers_share_one_study(killed):
    out, url, _, stdout, _ = killed
    assert "2 workers: pids" in stdout and "study duo: 3 of 3 trials finished" in stdout
    study = load_study("duo", url)
    done = finished(study)
    assert len(done) == 3
    # Both workers trained (the killed one finished nothing: the other did its trial's retry).
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    for t in done:
        assert t.user_attrs["parameters"] > 0
        if t.state == TrialState.PRUNED:  # a sampled architecture whose loss diverged stops early
            assert "diverged" in t.user_attrs and t.user_attrs["steps"] <= 12
            continue
        assert t.user_attrs["steps"] == 12
        spec = convrnn.ModelSpec.from_dict(t.user_attrs["spec"]).validate()
        assert spec.image_size == 32
        run = out / "trials" / f"{t.system_attrs.get('failed_trial', t.number):05d}"
        assert (run / "spec.yaml").exists() and (run / "final" / "model.safetensors").exists()
        assert not (run / "checkpoints").exists()  # cleaned once finished


def test_killed_worker_is_retried_and_no_trial_runs_twice(killed):
    _, url, _, stdout, victim = killed
    assert "exited with signal 9" in stdout
    trials = load_study("duo", url).trials
    assert trials[victim.number].state == TrialState.FAIL
    assert len(trials) == 4  # the three, and the retry of the killed one: nothing skipped or extra
    done = [t for t in trials if t.state in FINISHED]
    retries = [t for t in done if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert "resuming" in stdout  # the retry continued the dead worker's run from its step-4 checkpoint
    # Every finished trial is a distinct piece of work: no trial or retry completed twice.
    origins = [t.system_attrs.get("failed_trial", t.number) for t in done]
    assert len(set(origins)) == len(origins) == 3


def test_rerunning_continues_to_the_new_target(killed):
    _, url, args, _, _ = killed
    before = {t.number: t.values for t in finished(load_study("duo", url))}
    args = [*args]
    args[args.index("--trials") + 1] = "4"
    args[args.index("--workers") + 1] = "1"  # any number of workers continues the same study
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "study duo: 4 of 4 trials finished" in proc.stdout
    after = {t.number: t.values for t in finished(load_study("duo", url))}
    assert len(after) == 4 and all(after[n] == v for n, v in before.items())  # earlier trials untouched
    # Other per-trial settings: refused with one line naming what differs.
    args[args.index("--width") + 1] = "0.25"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args) == 2
    assert "made with other settings (differs in train.width)" in err.getvalue()


def test_report_and_export_round_trip(killed, tmp_path):
    _, url, _, _, _ = killed
    proc = run_cli(
        [
            "search",
            "report",
            "duo",
            "--storage",
            url,
            "--out",
            str(tmp_path / "report"),
            "--export-best",
            "2",
            str(tmp_path / "best"),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert "best" in proc.stdout and "Pareto front" in proc.stdout
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert {"history.png", "pareto.png", "intermediate.png", "importances.png"} <= pngs
    study = load_study("duo", url)
    ranked = sorted(
        (t for t in study.trials if t.state == TrialState.COMPLETE),
        key=lambda t: (-t.user_attrs["accuracy"], t.user_attrs["parameters"]),
    )[:2]
    specs = sorted((tmp_path / "best").glob("*.yaml"))
    assert [p.stem for p in specs] == sorted(f"duo-trial{t.number:05d}" for t in ranked)
    # The exported spec builds the measured model; its weights give the measured accuracy again.
    _, val, _ = build_datasets("clutter", 32, 0, TINY["train-size"], TINY["val-size"], False)
    for t in ranked:
        path = tmp_path / "best" / f"duo-trial{t.number:05d}.yaml"
        meta = json.loads(path.with_suffix(".json").read_text())
        assert path.read_text().startswith("# convrnn search")
        spec = convrnn.ModelSpec.load(path)
        model = convrnn.create_model(spec)
        assert (
            sum(p.numel() for p in model.parameters() if p.requires_grad)
            == meta["parameters"]
            == t.user_attrs["parameters"]
        )
        assert meta["accuracy"] == t.user_attrs["accuracy"] and meta["params"] == t.params
        model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
        loader = DataLoader(val, batch_size=32, collate_fn=collate)
        acc = evaluate(model, ((x, y) for x, y, _ in loader), times=TINY["times"])
        assert acc.decoded_top1 == pytest.approx(meta["accuracy"], abs=1e-9)
