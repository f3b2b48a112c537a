"""The same study against a real PostgreSQL server (``.ci/postgres.sh``): the storage for many machines."""

from optuna.trial import TrialState
from search_helpers import run_cli, search_args

from convrnn.search.report import load_study


def test_two_workers_on_postgresql(postgres_url, tmp_path):
    args = search_args("pg", tmp_path / "pg", trials=3, workers=2, storage=postgres_url)
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "study pg: 3 of 3 trials finished" in proc.stdout
    study = load_study("pg", postgres_url)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == len(study.trials) == 3
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert all("spec" in t.user_attrs and t.user_attrs["steps"] >= 4 for t in done)
    # Nothing of the study went to a local SQLite file.
    assert not (tmp_path / "pg" / "study.db").exists()
