"""The training hook a search prunes with: ``train(cfg, on_eval)`` and ``eval_every_steps``."""

import json

import pytest

from convrnn.train.config import TrainConfig
from convrnn.train.evaluate import StepAccuracy
from convrnn.train.trainer import train


def tiny(out, **kw) -> TrainConfig:
    # 256 images / 32 per batch = 8 steps per epoch; 10 steps end in the second epoch.
    base = dict(
        model="rgc_shallow",
        data="clutter",
        out=str(out),
        max_steps=10,
        batch_size=32,
        image_size=32,
        width=0.125,
        times=6,
        train_size=256,
        val_size=64,
        workers=0,
        threads=1,
        progress=False,
        log_every=1,
    )
    return TrainConfig(**(base | kw))


def evals(out) -> list[int]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if r["event"] == "eval"]


def test_on_eval_sees_every_evaluation(tmp_path):
    calls: list[tuple[int, StepAccuracy]] = []
    result = train(tiny(tmp_path / "a", eval_every_steps=4), on_eval=lambda s, a: calls.append((s, a)))
    # Every 4 steps, the epoch end (step 8, once), and the final evaluation.
    assert [s for s, _ in calls] == [4, 8, 10] == evals(tmp_path / "a")
    assert calls[-1][1].decoded_top1 == result["decoded_top1"]
    assert len(calls[0][1].top1) == 6
    # Without eval_every_steps: per epoch only, as before.
    steps = []
    train(tiny(tmp_path / "b"), on_eval=lambda s, a: steps.append(s))
    assert steps == [8, 10] == evals(tmp_path / "b")


def test_raising_in_on_eval_stops_training_there(tmp_path):
    class Stop(Exception):
        pass

    def stop_at_4(step: int, acc: StepAccuracy) -> None:
        if step == 4:
            raise Stop

    out = tmp_path / "stopped"
    with pytest.raises(Stop):
        train(tiny(out, eval_every_steps=4), on_eval=stop_at_4)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in recs if r["event"] == "train") == 4
    assert not (out / "final").exists()


def test_eval_every_steps_is_validated():
    from convrnn.errors import SpecError

    with pytest.raises(SpecError, match="eval_every_steps: must be >= 1"):
        TrainConfig(eval_every_steps=0).validate()
