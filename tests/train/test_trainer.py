"""Training: exact resume after kill -9, torchrun equivalence, the run folder, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from convrnn.cli import main
from convrnn.train.checkpoint import load_latest
from convrnn.train.config import TrainConfig
from convrnn.train.trainer import TrainingError, train


def make_folder(root: Path, n_train: int = 12, n_val: int = 4, size=(40, 44), seed: int = 0) -> Path:
    """A tiny ImageNet-layout dataset: class b has a bright left half, class a is noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                if c == "b":
                    a[:, : size[1] // 2] = 255
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def cli_args(data: Path, out: Path, **extra) -> list[str]:
    args = {
        "data": data,
        "out": out,
        "model": "rgc_shallow",
        "width": 0.0625,
        "image-size": 32,
        "batch-size": 4,
        "max-steps": 10,
        "checkpoint-every": 2,
        "workers": 0,
        "threads": 1,
        "times": 8,
        "lr": 0.05,
    } | extra
    out_args = ["train", "--no-progress", "--deterministic"]
    for k, v in args.items():
        out_args += [f"--{k}", str(v)]
    return out_args


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "convrnn.cli", *args], env=env, capture_output=True, text=True, **kw)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory) -> Path:
    """An uninterrupted run to compare against."""
    out = tmp_path_factory.mktemp("runs") / "full"
    proc = run_cli(cli_args(data, out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_run_folder_contents(reference_run):
    out = reference_run
    assert (out / "config.yaml").exists() and (out / "final" / "spec.yaml").exists()
    assert {p.name for p in (out / "plots").iterdir()} >= {"loss.png", "accuracy_per_step.png"}
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["event"] == "train"] == [10]
    evals = [r for r in recs if r["event"] == "eval"]
    assert len(evals[-1]["top1_per_step"]) == 8  # accuracy at every step
    assert (out / "metrics.csv").read_text().splitlines()[0] == "step,epoch,loss,lr,images_per_s"
    # Checkpoints: the newest two, each weights (safetensors) + state (no code unpickled on load).
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000008", "step_0000010"]
    weights, state = load_latest(out)
    assert state["step"] == 10 and set(weights) == set(final_weights(out))


def test_resume_after_kill_9_is_bit_identical(data, reference_run, tmp_path):
    out = tmp_path / "killed"
    args = cli_args(data, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for kill_after in (2, 6):  # kill twice, at different points
        proc = subprocess.Popen([sys.executable, "-m", "convrnn.cli", *args], env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            latest = out / "checkpoints" / "latest"
            if latest.exists() and int(latest.read_text().split("_")[1]) >= kill_after:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr
    a, b = final_weights(reference_run), final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


CHECKPOINTING = ["--grad-checkpointing", "--segment-steps", "3"]


def test_activation_checkpointing_trains_the_same_model(data, reference_run, tmp_path):
    """Checkpointing (per layer and in segments) recomputes the same math: the same weights after
    10 steps, to float rounding."""
    out = tmp_path / "ckpt"
    proc = run_cli(cli_args(data, out) + CHECKPOINTING)
    assert proc.returncode == 0, proc.stderr
    assert TrainConfig.load(out / "config.yaml").segment_steps == 3
    a, b = final_weights(reference_run), final_weights(out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize(
    "extra", [[], CHECKPOINTING[:1], CHECKPOINTING], ids=["plain", "checkpointed-layers", "checkpointed-segments"]
)
def test_two_processes_train_the_same_model_as_one(data, reference_run, tmp_path, extra):
    """Also with activation checkpointing; checkpointed segments backpropagate through each weight
    once per segment, and their gradients are averaged after the backward pass."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "convrnn.cli", *cli_args(data, out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = final_weights(reference_run), final_weights(out)
    for k in a:
        # Same global batch, gradients averaged over 2 processes: equal up to summation order.
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="rgc_shallow", width=0.0625, image_size=32, batch_size=4)
    base |= dict(max_steps=4, checkpoint_every=2, workers=0, times=8, progress=False)
    return TrainConfig(**(base | kw))


def test_out_holding_another_config_is_refused_unless_forced(data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(data, out))
    with pytest.raises(TrainingError, match=r"holds a run with another config \(differs in lr\)"):
        train(_cfg(data, out, lr=0.5))
    result = train(_cfg(data, out, lr=0.5, force=True))
    assert result["step"] == 4
    assert TrainConfig.load(out / "config.yaml").lr == 0.5
    # Same config, more steps allowed? No: max_steps is part of the config; workers is not.
    train(_cfg(data, out, lr=0.5, workers=1, force=False))
    # Activation checkpointing computes the same math: a run may resume with it switched on.
    train(_cfg(data, out, lr=0.5, grad_checkpointing=True, segment_steps=2, force=False))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(segment_steps=3), "segment_steps: needs grad_checkpointing"),
        (dict(grad_checkpointing=True, segment_steps=0), "segment_steps: must be >= 1"),
    ],
)
def test_checkpointing_settings_are_validated(fields, message):
    from convrnn.errors import SpecError

    with pytest.raises(SpecError, match=message):
        TrainConfig(**fields).validate()


def test_nan_loss_stops_and_names_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    import convrnn.train.trainer as tr

    real, calls = tr.readout_loss, {"n": 0}

    def poisoned(*a, **k):  # the 3rd step's loss is NaN
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(tr, "readout_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"loss became nan at step 3; stopped; last good checkpoint: step 2 in"):
        train(_cfg(data, out, max_steps=8))
    assert load_latest(out)[1]["step"] == 2


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    import convrnn.train.checkpoint as ck

    out = tmp_path / "full"
    calls = {"n": 0}
    real = ck.save_file

    def flaky(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint hits a full disk
            raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", flaky)
    with pytest.raises(ck.CheckpointWriteError, match=r"step 4 .*No space left on device.*step_0000002\) is intact"):
        train(_cfg(data, out, max_steps=6))
    assert load_latest(out)[1]["step"] == 2
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_bad_data_is_a_clear_one_line_error(tmp_path, capsys):
    data = make_folder(tmp_path / "d", n_train=2, n_val=1)
    (data / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = cli_args(data, tmp_path / "r1", **{"batch-size": 2, "max-steps": 3})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "broken.png" in err and len(err.strip().splitlines()) == 1
    # The same from a DataLoader worker process (torch wraps it with the worker's traceback): one line.
    assert main(cli_args(data, tmp_path / "r5", **{"batch-size": 2, "max-steps": 3, "workers": 2})) == 2
    err = capsys.readouterr().err
    assert err.startswith("convrnn: cannot read image") and "broken.png" in err and len(err.strip().splitlines()) == 1
    # --skip-bad-images skips and counts them.
    assert main([*args, "--skip-bad-images", "--out", str(tmp_path / "r2")]) == 0
    assert "skipped" in capsys.readouterr().out
    flat = tmp_path / "flat"
    flat.mkdir()
    assert main(cli_args(flat, tmp_path / "r3")) == 2
    assert "not ImageNet layout" in capsys.readouterr().err
    (data / "train" / "c").mkdir()
    assert main(cli_args(data, tmp_path / "r4")) == 2
    assert "holds no images" in capsys.readouterr().err


def test_grayscale_rgba_and_cmyk_images_train(tmp_path):
    data = make_folder(tmp_path / "d", n_train=2, n_val=1)
    img = np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)
    Image.fromarray(img).convert("L").save(data / "train" / "a" / "gray.png")
    Image.fromarray(img).convert("RGBA").save(data / "train" / "a" / "rgba.png")
    Image.fromarray(img).convert("CMYK").save(data / "train" / "b" / "cmyk.jpg")
    assert train(_cfg(data, tmp_path / "r", batch_size=2, max_steps=3))["step"] == 3


def test_eval_run_prints_accuracy_per_step(reference_run, capsys):
    assert main(["eval", "--run", str(reference_run), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "readout (last)" in text
    assert (reference_run / "eval.json").exists() and (reference_run / "plots" / "eval_accuracy_per_step.png").exists()


@pytest.mark.parametrize("loss", ["avg", "all"])
def test_loss_on_a_window_or_every_step(data, tmp_path, loss):
    result = train(_cfg(data, tmp_path / loss, loss=loss, max_steps=2))
    assert result["step"] == 2


def test_bf16_channels_last_and_a_spec_file_as_model(data, tmp_path):
    import convrnn

    spec = convrnn.model_spec("rgc_intermediate", num_classes=2, image_size=32, width=0.0625)
    spec.save(tmp_path / "m.yaml")
    cfg = _cfg(data, tmp_path / "r", model=str(tmp_path / "m.yaml"), width=None, amp=True, channels_last=True)
    result = train(cfg)
    assert result["step"] == 4 and np.isfinite(result["decoded_top1"])
    with pytest.raises(ValueError, match=r"the spec is for 32px .* the data need 48px"):
        train(_cfg(data, tmp_path / "r2", model=str(tmp_path / "m.yaml"), width=None, image_size=48))


def _plateau_cfg(data: Path, out: Path) -> TrainConfig:
    # delta 1.0 cannot be reached: every evaluation after the first is a plateau (patience 1), so the rate
    # drops after the evaluations at steps 4 and 6, and the one at step 8 ends the run.
    return _cfg(
        data,
        out,
        schedule="plateau",
        eval_every=10**6,
        eval_every_steps=2,
        max_steps=40,
        plateau_patience=1,
        plateau_delta=1.0,
        plateau_drops=2,
        lr=0.05,
        log_every=1,
        deterministic=True,
        threads=1,
    )


def test_plateau_schedule_drops_the_rate_then_stops(data, tmp_path):
    out = tmp_path / "plateau"
    res = train(_plateau_cfg(data, out))
    assert res["step"] == 8 and res["stop"] == "plateau" and res["plateau"]["drops"] == 2
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["action"]) for r in recs if r["event"] == "plateau"] == [
        (4, "drop"),
        (6, "drop"),
        (8, "stop"),
    ]
    lr = {r["step"]: r["lr"] for r in recs if r["event"] == "train"}
    assert lr[4] == pytest.approx(0.05) and lr[5] == pytest.approx(0.005) and lr[7] == pytest.approx(0.0005)
    assert (out / "final" / "model.safetensors").exists()
    # A run stopped by the rule cannot go on: the stop is in its last checkpoint.
    assert load_latest(out)[1]["plateau"]["stopped"] is True
    assert train(_plateau_cfg(data, out))["step"] == 8


def test_plateau_schedule_resumes_exactly(data, tmp_path):
    """The rule's state is part of every checkpoint: a run interrupted after its second drop resumes from
    the step-6 checkpoint at a hundredth of the rate (from the checkpoint, not from the schedule) and ends
    with the same weights."""
    ref = tmp_path / "ref"
    train(_plateau_cfg(data, ref))
    out = tmp_path / "resumed"

    def interrupt(step: int, acc) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_plateau_cfg(data, out), on_eval=interrupt)
    state = load_latest(out)[1]
    assert state["step"] == 6 and state["plateau"]["drops"] == 2 and state["plateau"]["factor"] == pytest.approx(0.01)
    train(_plateau_cfg(data, out))
    a, b = final_weights(ref), final_weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"plateau_patience": 0}, "plateau_patience"),
        ({"plateau_factor": 1.0}, "plateau_factor"),
        ({"plateau_delta": -0.1}, "plateau_delta"),
    ],
)
def test_plateau_settings_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields).validate()


def test_off_a_terminal_progress_is_a_line_every_so_often(data, tmp_path, capsys, monkeypatch):
    import convrnn.train.trainer as trainer

    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)  # a line every step
    train(_cfg(data, tmp_path / "run", progress=True, threads=1))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split(",")[0] for line in lines] == [
        "step 1/4 (25%)",
        "step 2/4 (50%)",
        "step 3/4 (75%)",
        "step 4/4 (100%)",
    ]
    assert all("images/s, loss " in line and line.endswith(" left") for line in lines)
