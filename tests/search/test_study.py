"""The search engine in one process on a real SQLite file: pruning, two objectives, retries that must
not run twice, and a study that refuses to continue with other settings."""

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from convrnn.search.report import pareto_front, summary, trial_rows, write_report
from convrnn.search.space import load_space
from convrnn.search.study import (
    SearchConfig,
    StudyError,
    _skip_reason,
    make_pruner,
    open_study,
    retry_callback,
    run_search,
)

BUDGET = dict(
    data="clutter",
    max_steps=12,
    batch_size=32,
    image_size=32,
    width=0.125,
    times=6,
    train_size=256,
    val_size=64,
    threads=1,
)


def config(tmp_path, study: str, trials: int, **kw) -> SearchConfig:
    base = dict(study=study, out=str(tmp_path / study), trials=trials, startup_trials=2, prune_every=4)
    base |= dict(heartbeat=1, grace=4, poll=0.2, train=dict(BUDGET))
    return SearchConfig(**(base | kw))


def test_pruning_stops_trials_early(tmp_path):
    # A threshold no accuracy reaches: every trial is pruned at its first report (step 4 of 12).
    cfg = config(tmp_path, "pruned", 2, pruner="threshold", prune_below=1.01)
    counts = run_search(cfg, log=lambda m: None)
    assert counts == {"PRUNED": 2}
    study = optuna.load_study(study_name="pruned", storage=cfg.storage_url)
    for t in study.trials:
        assert t.user_attrs["steps"] == 4 < 12
        assert list(t.intermediate_values) == [4]
        run = tmp_path / "pruned" / "trials" / f"{t.number:05d}"
        assert (run / "spec.yaml").exists() and not (run / "final").exists()
    assert summary(study)["steps"] == 8  # the compute a report counts: steps actually run


def small_space(tmp_path, train: str = "lr: 0.01") -> str:
    """A few dimensions that change the model's size, with a learning rate the zoo model trains stably at."""
    path = tmp_path / "small.yaml"
    path.write_text(
        "cell:\n  cell_channels: [16, 64, 256]\n  gate_kernel: [0, 3]\n"
        f"feedback:\n  edges: [conv5->conv3]\ntrain:\n  {train}\n"
    )
    return str(path)


def test_resuming_does_not_replay_the_first_draws(tmp_path):
    # Random draws (TPE's start-up), trials pruned at their first report to keep this quick.
    cfg = config(
        tmp_path, "again", 2, space=small_space(tmp_path), sampler="random", pruner="threshold", prune_below=1.01
    )
    run_search(cfg, log=lambda m: None)
    run_search(dataclasses.replace(cfg, trials=4), log=lambda m: None)
    trials = optuna.load_study(study_name="again", storage=cfg.storage_url).trials
    assert len(trials) == 4
    first, second = [t.params for t in trials[:2]], [t.params for t in trials[2:]]
    assert first != second


def test_diverged_trial_counts_as_stopped_early(tmp_path):
    cfg = config(tmp_path, "nan", 1, space=small_space(tmp_path, "lr: 1.0e+6\n  clip: none"), pruner="none")
    assert run_search(cfg, log=lambda m: None) == {"PRUNED": 1}
    (t,) = optuna.load_study(study_name="nan", storage=cfg.storage_url).trials
    assert t.user_attrs["diverged"].startswith("loss became")
    assert 1 <= t.user_attrs["steps"] < 12


def test_accuracy_size_objective_reports_the_pareto_front(tmp_path):
    cfg = config(
        tmp_path, "sizes", 3, space=small_space(tmp_path), objective="accuracy-size", pruner="none", sampler="random"
    )
    assert run_search(cfg, log=lambda m: None) == {"COMPLETE": 3}
    study = optuna.load_study(study_name="sizes", storage=cfg.storage_url)
    for t in study.trials:
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["parameters"]]
        assert t.user_attrs["steps"] == 12
    # Our front (used for single-objective studies too) is Optuna's for a two-objective study.
    assert {r.number for r in pareto_front(trial_rows(study))} == {t.number for t in study.best_trials}
    files = {p.name for p in write_report(study, tmp_path / "report")}
    assert {"trials.csv", "pareto.png", "history.png"} <= files


def test_a_retry_queued_twice_runs_once(tmp_path):
    """Two workers failing the same stale trial at once (SQLite allows it) queue two retries: one runs."""
    cfg = config(tmp_path, "dup", 2, pruner="none")
    space = load_space()
    study = open_study(cfg, space)
    # A trial whose worker died: parameters drawn from the space, state FAIL.
    scratch = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    t = scratch.ask()
    space.sample(t)
    scratch.tell(t, 0.0)
    drawn = scratch.trials[0]
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, params=drawn.params, distributions=drawn.distributions)
    )
    dead = study.trials[0]
    retry = retry_callback(cfg)
    retry(study, dead)
    retry(study, dead)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]

    run_search(cfg, log=lambda m: None)
    trials = optuna.load_study(study_name="dup", storage=cfg.storage_url).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2
    retried = [t for t in finished if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == dead.params
    assert [t.user_attrs.get("skipped") for t in trials if t.number == 2] == ["duplicate of trial 1"]


def test_a_trial_beyond_the_target_is_not_run(tmp_path):
    cfg = config(tmp_path, "surplus", 1)
    study = open_study(cfg, load_space())
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5))
    late = study.ask()  # asked concurrently with the one that completed the study
    assert _skip_reason(study, late.number, cfg.trials) == "surplus"
    assert _skip_reason(study, late.number, 2) is None


def test_continuing_with_other_settings_is_refused(tmp_path):
    cfg = config(tmp_path, "fixed", 2)
    open_study(cfg, load_space())
    other = dataclasses.replace(cfg, train={**cfg.train, "width": 0.25}, trials=5, workers=2)
    with pytest.raises(StudyError, match=r"--study fixed: .* made with other settings \(differs in train.width\)"):
        open_study(other, load_space())
    open_study(dataclasses.replace(cfg, trials=5, workers=2, heartbeat=2), load_space())  # not settings of a trial


def test_default_pruner_is_the_measured_successive_halving():
    """The default is what benchmarks/search_efficiency.py measured best (docs/search.md): successive
    halving keeping 1 in 4, its first rung at the first report unless --min-resource says otherwise."""
    cfg = SearchConfig(study="s")
    pruner = make_pruner(cfg, first_report=50, total_steps=1000)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor) == (50, 4)
    pruner = make_pruner(dataclasses.replace(cfg, min_resource=75), first_report=50, total_steps=1000)
    assert pruner._min_resource == 75
    hyperband = make_pruner(dataclasses.replace(cfg, pruner="hyperband"), first_report=50, total_steps=1000)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    no_pruning = dataclasses.replace(cfg, objective="accuracy-size")
    assert isinstance(make_pruner(no_pruning, first_report=50, total_steps=1000), optuna.pruners.NopPruner)


def test_match_params_builds_every_trial_at_the_budget(tmp_path):
    """Trials whose cells differ in size are each built at the width that matches the budget."""
    from convrnn.zoo.sizing import count_params

    budget = 60_000
    cfg = config(
        tmp_path, "matched", 3, sampler="random", pruner="none", match_params=budget, space=small_space(tmp_path)
    )
    cfg = dataclasses.replace(cfg, train={**BUDGET, "width": None, "max_steps": 4})
    assert run_search(cfg, log=lambda m: None) == {"COMPLETE": 3}
    study = optuna.load_study(study_name="matched", storage=cfg.storage_url)
    import convrnn

    for t in study.trials:
        spec = convrnn.ModelSpec.from_dict(t.user_attrs["spec"])
        assert t.user_attrs["parameters"] == count_params(spec)
        assert abs(t.user_attrs["parameters"] / budget - 1) <= 0.10, t.params
    with pytest.raises(ValueError, match="--match-params: each trial's width is chosen"):
        dataclasses.replace(cfg, train=dict(BUDGET)).validate()
