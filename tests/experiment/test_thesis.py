"""``convrnn experiment thesis``: the protocol as data, matched arms, shared tuning candidates, the
scheduler's tasks (tune, search, final) with resume, and the report's statistics."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from convrnn.cli import main
from convrnn.experiment.cells import ExperimentError
from convrnn.experiment.thesis import plan as planning
from convrnn.experiment.thesis import report as reporting
from convrnn.experiment.thesis import run as running
from convrnn.experiment.thesis.protocol import QUICK, Protocol, ProtocolError

# Smaller than --quick, through the same code paths.
TINY = dataclasses.replace(
    QUICK,
    arms=("ff_wide", "ff_deep", "gru", "rgc", "rgc_search"),
    train_size=128,
    val_size=32,
    test_size=48,
    train_eval_size=32,
    times=7,
    batch_size=16,
    tune_steps=4,
    search_trials=2,
    search_startup=1,
    search_steps=4,
    search_rung=2,
    eval_every=2,
    max_steps=12,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path / "cache"))


def test_protocol_round_trips_and_bad_settings_name_the_field():
    assert Protocol.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ProtocolError, match=r"protocol\.epochs: unknown setting"):
        Protocol.from_dict({"epochs": 3})
    with pytest.raises(ProtocolError, match=r"protocol\.arms: need distinct arms"):
        dataclasses.replace(TINY, arms=("ff_wide", "resnet"))
    with pytest.raises(ProtocolError, match=r"protocol\.task: ClutterConfig\.occlusion"):
        Protocol.from_dict({"task": {"occlusion": 2.0}})
    with pytest.raises(ProtocolError, match=r"protocol\.other_seeds: .* must be a subset"):
        dataclasses.replace(TINY, seeds=(0, 1), other_seeds=(5,))
    with pytest.raises(ProtocolError, match=r"protocol\.max_steps"):
        dataclasses.replace(TINY, max_steps=1)


def test_every_arm_is_matched_and_tuned_on_the_same_candidates():
    p = dataclasses.replace(TINY, arms=("ff_small", "ff_wide", "ff_large", "ff_deep", "lstm", "rgc_search"))
    arms = {a.name: a for a in planning.plan_arms(p)}
    target = planning.budget(p)
    assert arms["ff_small"].width == p.base_width and arms["ff_small"].params < target
    assert abs(arms["ff_large"].params / (2 * target) - 1) <= planning.TOLERANCE
    for name in ("ff_wide", "ff_deep", "lstm"):
        assert abs(arms[name].params / target - 1) <= planning.TOLERANCE
    assert arms["rgc_search"].spec is None and arms["rgc_search"].budget == target
    cands = planning.candidates(dataclasses.replace(p, tune_trials=8))
    assert cands == planning.candidates(dataclasses.replace(p, tune_trials=8))  # the same for every arm and run
    assert len({c["train.lr"] for c in cands}) == 8
    for c in cands:
        assert p.lr[0] <= c["train.lr"] <= p.lr[1] and p.weight_decay[0] <= c["train.weight_decay"] <= p.weight_decay[1]
        assert p.warmup[0] <= c["train.warmup_steps"] <= p.warmup[1]


def test_verdicts_follow_the_stated_rule():
    up, down, mixed = [0.05, 0.06, 0.04], [-0.05, -0.06, -0.04], [0.05, -0.06, 0.01]
    assert reporting.verdict([reporting.interval(up)]) == "reproduced"
    assert reporting.verdict([reporting.interval(up), reporting.interval(down)]) == "not reproduced"
    assert reporting.verdict([reporting.interval(mixed)]) == "not resolved"
    assert reporting.verdict([reporting.interval([0.3])]) == "not resolved"  # one seed: no interval
    m, lo, hi = reporting.interval([0.0, 0.1])
    assert m == pytest.approx(0.05) and lo < 0 < hi and math.isclose(hi - m, m - lo)


def test_solution_step_is_where_an_image_stays_right():
    labels = np.array([1, 1, 1, 1])
    pred = np.array(
        [
            [0, 1, 1, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
        ]
    )
    assert reporting.solution_steps(pred, labels).tolist() == [1, 0, 2, -1]


def test_run_resumes_refuses_another_protocol_and_reports(tmp_path):
    out = tmp_path / "thesis"
    assert running.run(TINY, out, jobs=2, log=lambda m: None) == []
    tuned = {a: json.loads(running.tuned_file(out, a).read_text()) for a in TINY.arms}
    for arm, t in tuned.items():
        assert len(t["trials"]) == TINY.tune_trials
        # Every arm tried exactly the protocol's candidates.
        got = sorted((r["lr"], r["weight_decay"], r["warmup_steps"]) for r in t["trials"])
        want = sorted(tuple(c.values()) for c in planning.candidates(TINY))
        assert got == want, arm
    searched = json.loads(running.searched_file(out).read_text())
    assert abs(searched["params"] / planning.budget(TINY) - 1) <= 0.10
    # Seeds: every seed for the feedforward and searched arms and the best tuned cell, other_seeds for the rest.
    best = max(("gru", "rgc"), key=lambda a: tuned[a]["val_top1"])
    other = ({"gru", "rgc"} - {best}).pop()
    for arm in ("ff_wide", "ff_deep", "rgc_search", best):
        assert running.seeds_for(out, TINY, arm) == TINY.seeds
    assert running.seeds_for(out, TINY, other) == TINY.other_seeds
    assert running.pending(out, TINY) == []
    res = json.loads((running.final_dir(out, best, 1) / "result.json").read_text())
    assert res["stop"] in ("plateau", "budget") and res["steps"] <= TINY.max_steps
    assert len(res["test_top1_per_step"]) == TINY.times
    with np.load(running.final_dir(out, best, 1) / "predictions.npz") as z:
        assert z["test"].shape == (TINY.times, TINY.test_size) and z["train"].shape == (TINY.times, 32)
        assert np.allclose((z["test"] == running.test_set(TINY)["labels"]).mean(1), res["test_top1_per_step"])

    # Resume: nothing finished runs again; a run whose scoring was lost is scored again, the same.
    ledger = (out / "ledger.jsonl").read_text().splitlines()
    (running.final_dir(out, "ff_wide", 0) / "result.json").unlink()
    assert running.run(TINY, out, jobs=1, log=lambda m: None) == []
    new = (out / "ledger.jsonl").read_text().splitlines()[len(ledger) :]
    assert [json.loads(line)["task"] for line in new] == ["final ff_wide seed 0"]
    again = json.loads((running.final_dir(out, "ff_wide", 0) / "result.json").read_text())
    assert again["steps"] > 0 and len(again["test_top1_per_step"]) == TINY.times

    with pytest.raises(ExperimentError, match=r"another protocol \(differs in patience\)"):
        running.run(dataclasses.replace(TINY, patience=2), out, log=lambda m: None)

    docs = tmp_path / "results.md"
    docs.write_text(f"# Results\n\nprose\n\n{reporting.MARK_BEGIN}\nold\n{reporting.MARK_END}\n\nmore prose\n")
    files = reporting.report(out, docs=docs)
    text = docs.read_text()
    assert "old" not in text and text.startswith("# Results\n\nprose") and text.endswith("more prose\n")
    for heading in ("**Tuning**", "**Search**", "**Final runs**", "**Hard and easy images**", "**Claims**"):
        assert heading in text
    assert (tmp_path / "results" / "thesis_accuracy_vs_params.png").exists()
    assert {f.name for f in files} >= {"results.md", "summary.json", "runs.csv", "thesis_difficulty_per_step.png"}
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert {r["arm"] for r in summary["rows"]} == set(TINY.arms)
    assert {c["verdict"] for c in summary["claims"]} <= {"reproduced", "not reproduced", "not resolved"}
    # The command rebuilds the report from the folder alone.
    (out / "report" / "results.md").unlink()
    assert main(["experiment", "thesis", "--report", "--out", str(out)]) == 0
    assert "**Final runs**" in (out / "report" / "results.md").read_text()


def test_cli_plan_prints_the_budget_and_the_cost(tmp_path, capsys):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY.to_dict()))
    assert main(["experiment", "thesis", "--plan", "--protocol", str(path), "--out", str(tmp_path / "x")]) == 0
    text = capsys.readouterr().out
    assert f"budget: {planning.budget(TINY):,} parameters" in text and "planned CPU hours" in text
    assert "| `rgc_search` |" in text
    path.write_text('{"arms": ["nope"]}')
    assert main(["experiment", "thesis", "--plan", "--protocol", str(path)]) == 2
    assert "protocol.arms" in capsys.readouterr().err
