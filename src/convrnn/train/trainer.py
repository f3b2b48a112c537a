"""``convrnn train``: task-driven training of a ConvRNN, resumable bit for bit, on one or many processes.

The run folder (``--out``) holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` and
``metrics.csv``, ``checkpoints/``, ``plots/`` and, at the end, ``final/model.safetensors`` with its
``spec.yaml``. Re-running the same command with the same ``--out`` resumes from the latest checkpoint.
Under ``torchrun --nproc_per_node N`` the same command trains with DistributedDataParallel (gloo on
CPU, NCCL on GPUs): each process takes its share of every global batch and only rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

import convrnn
from convrnn.errors import SpecError
from convrnn.model import ConvRNN
from convrnn.spec import ModelSpec
from convrnn.train.checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from convrnn.train.config import TrainConfig
from convrnn.train.data import ResumableBatchSampler, build_datasets, collate, default_image_size
from convrnn.train.evaluate import StepAccuracy, evaluate

PROGRESS_EVERY_S = 30.0  # off a terminal: seconds between progress lines


class TrainingError(RuntimeError):
    """Training stopped; the message says why and which checkpoint is the last good one."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite at optimizer step ``step`` (a property of the run, not a bad input)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def build_model(model: str, num_classes: int, image_size: int, width: float | None) -> ConvRNN:
    """A zoo model by name, or a model from a spec file (``.yaml``/``.json``)."""
    if model.endswith((".yaml", ".yml", ".json")):
        spec = ModelSpec.load(model)
        if spec.image_size != image_size or convrnn.create_model(spec).num_classes != num_classes:
            raise SpecError(
                f"--model {model}: the spec is for {spec.image_size}px and its own class count; the data need "
                f"{image_size}px and {num_classes} classes"
            )
        return convrnn.create_model(spec)
    kw: dict[str, Any] = {"num_classes": num_classes, "image_size": image_size}
    if width is not None:
        kw["width"] = width
    return convrnn.create_model(model, **kw)


def readout_loss(model: ConvRNN, logits: Tensor, y: Tensor, kind: str) -> Tensor:
    """Cross-entropy on the last step, on the mean logits of the decoding window, or on every step
    from the one where the readout first sees the stimulus."""
    if kind == "last":
        return F.cross_entropy(logits[-1].float(), y)
    first = int(model.first_stimulus_steps()[model.spec.readout.layer])
    if first >= logits.shape[0]:
        raise SpecError(f"times: {logits.shape[0]} steps end before the readout sees the stimulus (step {first})")
    if kind == "avg":
        return F.cross_entropy(logits[min(first + 1, logits.shape[0] - 1) :].float().mean(0), y)
    seq = logits[first:].float()
    return F.cross_entropy(seq.flatten(0, 1), y.repeat(seq.shape[0]))


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients over the processes: one all-reduce of them all, flattened (a
    parameter without a gradient has none on every process: the same graph runs everywhere)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for g, v in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(v.view_as(g))


class Plateau:
    """The state of ``schedule="plateau"``: the rate's factor, the best validation top-1 and the count of
    evaluations since it last rose by ``plateau_delta``. Saved in every checkpoint, so a resumed run
    drops its rate and stops where an uninterrupted one would."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.factor, self.best, self.since, self.drops, self.stopped = 1.0, -1.0, 0, 0, False

    def update(self, top1: float) -> str | None:
        """Take one evaluation; returns ``"drop"`` or ``"stop"`` when the rule fires, else None."""
        cfg = self.cfg
        if top1 >= self.best + cfg.plateau_delta or self.best < 0:
            self.best, self.since = max(self.best, top1), 0
            return None
        self.best = max(self.best, top1)
        self.since += 1
        if self.since < cfg.plateau_patience:
            return None
        self.since = 0
        if self.drops < cfg.plateau_drops:
            self.drops += 1
            self.factor *= cfg.plateau_factor
            return "drop"
        self.stopped = True
        return "stop"

    def state_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "best": self.best,
            "since": self.since,
            "drops": self.drops,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor, self.best = float(state["factor"]), float(state["best"])
        self.since, self.drops = int(state["since"]), int(state["drops"])
        self.stopped = bool(state.get("stopped", False))


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int, plateau: Plateau | None = None) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "plateau":
        return plateau.factor if plateau is not None else 1.0
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    if cfg.schedule == "step":
        return 0.1 ** (step // max(1, cfg.step_every * steps_per_epoch))
    return 1.0


class _ProgressLines:
    """A one-line progress report on standard error every ``PROGRESS_EVERY_S`` seconds: step, images/s,
    loss and the time left at the recent rate."""

    def __init__(self, total: int, step: int, batch_size: int) -> None:
        self.total, self.batch_size = total, batch_size
        self.last_t, self.last_step = time.perf_counter(), step

    def step(self, step: int, loss: Tensor) -> None:
        now = time.perf_counter()
        if now - self.last_t < PROGRESS_EVERY_S and step < self.total:
            return
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)  # steps per second, recently
        left = (self.total - step) / rate if rate > 0 else float("inf")
        eta = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
        print(
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%), {rate * self.batch_size:.0f} images/s, "
            f"loss {loss.item():.3f}, {eta} left",
            file=sys.stderr,
            flush=True,
        )
        self.last_t, self.last_step = now, step


class _Run:
    """The run folder: config check, metrics, plots (rank 0 only writes)."""

    def __init__(self, cfg: TrainConfig, rank: int) -> None:
        self.dir = Path(cfg.out)
        self.writer = rank == 0
        if not self.writer:
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise TrainingError(f"--out {str(self.dir)!r} is a file; a run needs a folder")
        cfg_file = self.dir / "config.yaml"
        if cfg_file.exists():
            try:
                old = TrainConfig.load(cfg_file)
            except (SpecError, ValueError) as e:
                raise TrainingError(f"--out {str(self.dir)!r} holds an unreadable config.yaml ({e})") from None
            diff = cfg.differences(old)
            if diff and not cfg.force:
                raise TrainingError(
                    f"--out {str(self.dir)!r} holds a run with another config (differs in {', '.join(diff)}); "
                    "choose another --out, or --force to start over there"
                )
            if diff:
                for name in ("checkpoints", "final", "plots", "metrics.jsonl", "metrics.csv"):
                    p = self.dir / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / ".config.yaml.tmp"
        tmp.write_text(cfg.to_yaml())
        tmp.replace(cfg_file)

    def log(self, record: dict[str, Any]) -> None:
        if not self.writer:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if record.get("event") == "train":
            path = self.dir / "metrics.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "epoch", "loss", "lr", "images_per_s"])
                w.writerow([record["step"], record["epoch"], record["loss"], record["lr"], record["images_per_s"]])


def _plateau_decision(plateau: Plateau, acc: StepAccuracy | None, world: int, device: torch.device) -> str | None:
    """Apply the plateau rule to rank 0's evaluation and share its decision with every process."""
    decision = plateau.update(acc.decoded_top1) if acc is not None else None
    if world > 1:
        code = torch.tensor([{"drop": 1, "stop": 2}.get(decision or "", 0)], device=device)
        dist.broadcast(code, 0)
        if acc is None:  # the other ranks follow rank 0's rule
            decision = {1: "drop", 2: "stop"}.get(int(code.item()))
            if decision == "drop":
                plateau.drops += 1
                plateau.factor *= plateau.cfg.plateau_factor
            elif decision == "stop":
                plateau.stopped = True
    return decision


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def train(cfg: TrainConfig, on_eval: Callable[[int, StepAccuracy], None] | None = None) -> dict[str, Any]:
    """Train per ``cfg``; returns the final evaluation (rank 0) as a dict.

    ``on_eval(step, accuracy)`` is called after every evaluation (each ``eval_every`` epochs, each
    ``eval_every_steps`` optimizer steps, and the final one) with the optimizer steps run so far. It may
    raise to stop training there (an architecture search prunes a trial this way); the exception
    propagates out of ``train`` and the checkpoints written so far stay valid. Only rank 0 evaluates,
    so stopping early is for single-process runs.
    """
    cfg.validate()
    rank, world, device = _setup_distributed(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    run = _Run(cfg, rank)
    if world > 1:
        dist.barrier()
    image_size = cfg.image_size or default_image_size(cfg.data)
    train_set, val_set, classes = build_datasets(
        cfg.data, image_size, cfg.seed, cfg.train_size, cfg.val_size, cfg.skip_bad_images
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    model = build_model(cfg.model, len(classes), image_size, cfg.width).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True, segment_steps=cfg.segment_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(f"the training set has {len(train_set)} images, fewer than one batch of {cfg.batch_size}")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    plateau = Plateau(cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total, steps_per_epoch, plateau))

    step = epoch = batch = 0
    last_good: int | None = None
    resumed = load_latest(run.dir)
    if resumed is not None:
        weights, state = resumed
        model.load_state_dict(weights)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, epoch, batch = state["step"], state["epoch"], state["batch"]
        set_rng_state(state["rng"])
        if "plateau" in state:
            plateau.load_state_dict(state["plateau"])
            if plateau.stopped:  # the rule ended the run at this checkpoint; only the final save was lost
                total = step
            # LambdaLR cached the rate of the step it was saved at; recompute it with the restored factor.
            for group, base in zip(opt.param_groups, sched.base_lrs):
                group["lr"] = base * lr_factor(cfg, step, total, steps_per_epoch, plateau)
        last_good = step
        if run.writer:
            print(f"resuming {run.dir} at step {step} (epoch {epoch}, batch {batch})", file=sys.stderr)

    net: nn.Module = model
    if world > 1:
        has_unused = any(True for _ in model.decoder.parameters())  # a decoder's temperature gets no gradient
        net = ddp = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=has_unused,
        )
    if cfg.compile:
        net = torch.compile(net)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext()
    # Checkpointed segments backpropagate through every weight once per segment, each in its own
    # backward pass inside the outer one; DistributedDataParallel's gradient hooks (also with
    # static_graph=True) then average wrong gradients. Under segments DDP only keeps the buffers
    # in step, and the gradients are averaged after the backward pass.
    own_sync = world > 1 and cfg.grad_checkpointing and cfg.segment_steps is not None
    no_sync = ddp.no_sync if own_sync else nullcontext

    def checkpoint() -> None:
        nonlocal last_good
        if run.writer:
            state = {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "epoch": epoch,
                "batch": batch,
                "rng": rng_state(),
                "plateau": plateau.state_dict(),
            }
            save_checkpoint(run.dir, step, model, state, keep=cfg.keep_checkpoints)
        last_good = step
        if world > 1:
            dist.barrier()

    def validate() -> StepAccuracy:
        loader = DataLoader(val_set, batch_size=max(1, cfg.batch_size), num_workers=cfg.workers, collate_fn=collate)
        acc = evaluate(model, ((x, y) for x, y, _ in loader), times=cfg.times, device=device)
        model.train()
        run.log({"event": "eval", "step": step, "epoch": epoch, **acc.as_dict()})
        return acc

    bar = None
    if run.writer and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr, disable=None)
    # Off a terminal tqdm stays silent (disable=None), so a redirected log gets a line every so often instead.
    lines = _ProgressLines(total, step, cfg.batch_size) if run.writer and cfg.progress and bar.disable else None
    model.train()
    skipped = 0
    acc: StepAccuracy | None = None
    while step < total:
        sampler = ResumableBatchSampler(len(train_set), cfg.batch_size, cfg.seed, epoch, batch, rank, world)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate)
        t0 = time.perf_counter()
        for x, y, n_bad in loader:
            skipped += n_bad
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast, no_sync():
                logits = net(x, times=cfg.times).logits
                loss = readout_loss(model, logits, y, cfg.loss)
            finite = torch.isfinite(loss.detach()).float()
            if world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                where = f"step {last_good} in {str(run.dir / 'checkpoints')!r}" if last_good is not None else "none yet"
                raise DivergedError(
                    f"loss became {loss.item()} at step {step + 1}; stopped; last good checkpoint: {where}", step + 1
                )
            opt.zero_grad(set_to_none=True)
            with no_sync():
                loss.backward()
            if own_sync:
                average_gradients(params, world)
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            elif cfg.clip_value is not None:
                torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
            opt.step()
            sched.step()
            step += 1
            batch += 1
            if step % cfg.log_every == 0 or step == total:
                dt = time.perf_counter() - t0
                ips = cfg.log_every * cfg.batch_size / dt if dt > 0 else float("nan")
                rec = {
                    "event": "train",
                    "step": step,
                    "epoch": epoch,
                    "loss": loss.item(),
                    "lr": sched.get_last_lr()[0],
                }
                run.log({**rec, "images_per_s": round(ips, 1), "skipped_images": skipped})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{ips:.0f}")
                t0 = time.perf_counter()
            if bar is not None:
                bar.update(1)
            if lines is not None:
                lines.step(step, loss)
            end_of_epoch = batch == steps_per_epoch
            if end_of_epoch:
                epoch, batch = epoch + 1, 0
            due = (end_of_epoch and epoch % cfg.eval_every == 0) or (
                cfg.eval_every_steps is not None and step % cfg.eval_every_steps == 0
            )
            # Evaluate before checkpointing: the plateau rule's state after this evaluation is part of the
            # checkpoint, so a run resumed from it continues exactly. The hook runs after the checkpoint, so
            # a step it reports (a search trial's) always has a checkpoint to resume from.
            if due and step < total:
                acc = None
                if run.writer:
                    acc = validate()
                if cfg.schedule == "plateau":
                    decision = _plateau_decision(plateau, acc, world, device)
                    if decision is not None and run.writer:
                        print(f"step {step}: validation top-1 on a plateau: {decision}", file=sys.stderr)
                        run.log({"event": "plateau", "step": step, "action": decision, "factor": plateau.factor})
                    if decision == "stop":
                        total = step
                    elif decision == "drop":
                        for group, base in zip(opt.param_groups, sched.base_lrs):
                            group["lr"] = base * lr_factor(cfg, step, total, steps_per_epoch, plateau)
            if step % cfg.checkpoint_every == 0 or end_of_epoch or step == total:
                checkpoint()
            if due and acc is not None and on_eval is not None and step < total:
                on_eval(step, acc)
            if step >= total or end_of_epoch:
                break
    if bar is not None:
        bar.close()
    result: dict[str, Any] = {}
    if run.writer:
        acc = validate()
        if on_eval is not None:
            on_eval(step, acc)
        final = run.dir / "final"
        final.mkdir(exist_ok=True)
        from safetensors.torch import save_file

        tmp = final / ".model.safetensors.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(final / "model.safetensors")
        model.spec.save(final / "spec.yaml")
        from convrnn.train.plots import plot_run

        plot_run(run.dir)
        stop = "plateau" if plateau.stopped else "budget"
        result = {
            "step": step,
            "skipped_images": skipped,
            "stop": stop,
            "plateau": plateau.state_dict(),
            **acc.as_dict(),
        }
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result
