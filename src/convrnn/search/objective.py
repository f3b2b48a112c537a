"""One trial: draw an architecture from the space, train it with ``convrnn.train``, report as it goes.

A trial's model is written as a spec file in its run folder (``<out>/trials/<number>/spec.yaml``)
and trained by :func:`convrnn.train.trainer.train` with the search's per-trial budget and the
trial's optimiser settings. Every evaluation reports the readout's top-1 accuracy at the optimizer
step reached, so the pruner can stop a poor architecture early. The trial's user attributes keep
what the report and the export need without training again: ``spec`` (the model spec as data),
``parameters`` (trainable parameter count), ``accuracy`` (final validation top-1), ``steps``
(optimizer steps run: the compute spent), ``train`` (the trial's optimiser settings),
``top1_per_step`` and ``run_dir``.

A trial whose loss diverges (NaN) is closed as PRUNED at the step it diverged, with the user
attribute ``diverged``: an outcome of its architecture and learning rate that the sampler should
learn from (Optuna's samplers ignore FAIL trials), and it counts towards ``--trials``.

A retried trial (its worker died) trains in the folder of the trial it retries, so it resumes from
that run's last checkpoint when the folder is on this machine.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from typing import Any

from convrnn.search.space import SearchSpace
from convrnn.search.study import SearchConfig
from convrnn.train.config import TrainConfig
from convrnn.train.evaluate import StepAccuracy

MATCH_TOLERANCE = 0.10  # with match_params, a trial's count may be this far off the budget


class TrialInterrupted(RuntimeError):
    """Another worker took this trial for dead (its heartbeat stalled); its retry will run it."""


class TrialRunner:
    """Trains trials for one worker; knows the data's classes and the steps a full trial runs."""

    def __init__(self, cfg: SearchConfig, space: SearchSpace) -> None:
        from convrnn.train.data import build_datasets, default_image_size
        from convrnn.train.trainer import TrainingError

        self.cfg, self.space = cfg, space
        self.base = TrainConfig(**{"workers": 0, **cfg.train}).validate()
        self.image_size = self.base.image_size or default_image_size(self.base.data)
        b = self.base
        train_set, _, classes = build_datasets(b.data, self.image_size, b.seed, b.train_size, b.val_size, False)
        self.num_classes = len(classes)
        steps_per_epoch = len(train_set) // b.batch_size
        if steps_per_epoch < 1:
            raise TrainingError(f"the training set has {len(train_set)} images, fewer than one batch of {b.batch_size}")
        self.total_steps = b.max_steps or b.epochs * steps_per_epoch
        # The first evaluation: the first rung a pruner can stop a trial at.
        self.first_report = min(cfg.prune_every or steps_per_epoch, self.total_steps)

    def spec_for(self, sample: Any, name: str) -> Any:
        def build(width: float | None) -> Any:
            return self.space.build_spec(
                sample,
                num_classes=self.num_classes,
                image_size=self.image_size,
                width=width,
                times=self.base.times,
                name=name,
            )

        target = self.cfg.match_params
        if target is None:
            return build(self.base.width)
        from convrnn.errors import SpecError
        from convrnn.zoo.sizing import match_width

        width, params = match_width(build, target, 0.25)
        if abs(params / target - 1) > MATCH_TOLERANCE:
            raise SpecError(
                f"match_params: the closest width ({width:g}) gives {params:,} parameters, "
                f"{100 * (params / target - 1):+.1f}% off {target:,}"
            )
        return build(width)

    def run(self, trial: Any, frozen: Any, lost: threading.Event | None = None) -> tuple[Any, Any, str]:
        """Train ``trial``; returns (values, state, a one-line summary) for ``study.tell``.

        ``frozen`` is the trial as stored (its retry history); ``lost`` is set by the heartbeat when
        the trial was failed behind this worker's back.
        """
        import optuna
        from optuna.trial import TrialState

        import convrnn
        from convrnn.train.trainer import DivergedError, train

        cfg = self.cfg
        sample = self.space.sample(trial)
        root = frozen.system_attrs.get("failed_trial", trial.number)  # a retry trains in its original's folder
        run_dir = (cfg.out_dir / "trials" / f"{root:05d}").resolve()
        if root == trial.number and run_dir.exists():
            shutil.rmtree(run_dir)  # left by an earlier study of this name: never resume someone else's run
        spec = self.spec_for(sample, f"{cfg.study}-trial{root:05d}")
        model = convrnn.create_model(spec)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        del model
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("parameters", n_params)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("train", sample.train)
        run_dir.mkdir(parents=True, exist_ok=True)
        spec.save(run_dir / "spec.yaml")
        tcfg = dataclasses.replace(
            self.base,
            model=str(run_dir / "spec.yaml"),
            out=str(run_dir),
            eval_every_steps=cfg.prune_every,
            progress=False,
            keep_checkpoints=1,
            force=True,  # a retry in another worker may differ in threads: start over rather than stop
            **sample.train,
        ).validate()
        reached = {"step": 0}

        def on_eval(step: int, acc: StepAccuracy) -> None:
            reached["step"] = step
            trial.set_user_attr("steps", step)
            if lost is not None and lost.is_set():
                raise TrialInterrupted(f"trial {trial.number}")
            if cfg.objective != "accuracy":
                return  # Optuna takes intermediate values (and prunes) in single-objective studies only
            trial.report(acc.decoded_top1, step)
            if cfg.pruning and step < self.total_steps and trial.should_prune():
                raise optuna.TrialPruned(f"accuracy {acc.decoded_top1:.3f} at step {step}")

        try:
            result = train(tcfg, on_eval=on_eval)
        except optuna.TrialPruned as e:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a pruned trial never resumes
            return None, TrialState.PRUNED, f"pruned: {e}"
        except DivergedError as e:
            # A result, not an accident: the sampler should learn to avoid this region, so the trial
            # counts as stopped early (PRUNED) rather than FAIL, which samplers ignore.
            trial.set_user_attr("steps", e.step)
            trial.set_user_attr("diverged", str(e).split(";")[0])
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            return None, TrialState.PRUNED, f"diverged: {e}"
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # final/ holds the weights
        acc = float(result["decoded_top1"])
        # The trainer's own count: a retry that resumed from a checkpoint may skip the evaluations
        # (and so the on_eval calls) of the steps its first attempt ran.
        reached["step"] = int(result["step"])
        trial.set_user_attr("steps", reached["step"])
        trial.set_user_attr("accuracy", acc)
        trial.set_user_attr("top1_per_step", result["top1_per_step"])
        values = acc if cfg.objective == "accuracy" else (acc, float(n_params))
        return values, TrialState.COMPLETE, f"accuracy {acc:.3f}, {n_params:,} parameters, {reached['step']} steps"


__all__ = ["TrialInterrupted", "TrialRunner"]
