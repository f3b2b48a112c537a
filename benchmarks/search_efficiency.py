"""Architecture search with pruning against the same search without it: accuracy reached, compute used.

Both arms run multivariate TPE over the shipped search space's cells and feedback (the paper's: every
RGC option, six candidate feedback edges) with AdamW in place of the reference's SGD (learning rate
1e-3 to 1e-2, log-uniform), so that a trial of a few hundred steps learns at all, on the built-in
cluttered-digits task at tiny scale,
with the same sampler seed, the same training seed and the same number of trials. One arm stops
poor trials early (successive halving on the accuracy reported every ``--prune-every`` optimizer
steps, the first rung at ``--min-resource`` steps), the other trains every trial to the end.
Training compute is counted as optimizer steps actually run (each trial records the steps it
reached, pruned or diverged trials included).

The two arms run side by side in two processes, one torch thread each (the 2 cores of this
machine); compute is counted in steps, so the timing of one arm does not affect the other's result.

    python benchmarks/search_efficiency.py            # about an hour on 2 cores

Last line: ``compute_ratio=X best_acc_pruned=Y best_acc_full=Z`` (compute of the pruned arm over
the full arm's; best validation top-1 of a completed trial in each arm).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from convrnn.search.report import load_study, summary
from convrnn.search.space import DEFAULT_SPACE
from convrnn.search.study import SearchConfig, run_search

# The optimiser part of the benchmark's space (the cell and feedback parts are the shipped default's).
TRAIN_SPACE = {
    "optimizer": "adamw",
    "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
    "weight_decay": {"low": 1.0e-6, "high": 1.0e-3, "log": True},
    "clip": ["norm", "value", "none"],
    "clip_norm": {"low": 0.1, "high": 10.0, "log": True},
    "clip_value": {"low": 0.05, "high": 1.0, "log": True},
}


def arm(cfg: SearchConfig) -> dict:
    """Run one arm to completion; its finished trials, steps and best accuracy."""
    t0 = time.perf_counter()
    run_search(cfg, log=lambda m: print(f"[{cfg.study}] {m}", flush=True))
    study = load_study(cfg.study, cfg.storage_url)
    info = summary(study)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.user_attrs["accuracy"])
    return {
        "counts": info["counts"],
        "steps": info["steps"],
        "best_acc": best.user_attrs["accuracy"],
        "best_trial": best.number,
        "seconds": time.perf_counter() - t0,
    }


def _run(cfg: SearchConfig, results: dict) -> None:
    results[cfg.study] = arm(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--startup-trials", type=int, default=12, help="TPE's random trials first")
    p.add_argument("--max-steps", type=int, default=1200, help="optimizer steps of a full trial")
    p.add_argument("--prune-every", type=int, default=75, help="evaluate and report every N steps")
    p.add_argument("--pruner", default="halving", choices=("halving", "hyperband", "median"))
    p.add_argument("--reduction-factor", type=int, default=4)
    # At this scale top-1 stays at chance (10 %) for the first 25-50 steps of a trial, and up to 75
    # for many random startup trials (measured): a rung before that prunes at random, and rankings
    # at 75 steps already agree well with the final ones (Spearman 0.72-0.84 in 600-step trials).
    # With 1200-step trials and reduction 4 the rungs sit at 75 and 300 steps (6 % and 25 % of a
    # trial). 600-step trials left the choice between a rung at 50 (a third of the compute, but the
    # best architecture lost) and rungs at 75 and later (about half the compute); docs/search.md.
    p.add_argument("--min-resource", type=int, default=75, help="steps before the first rung")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--times", type=int, default=6)
    p.add_argument("--train-size", type=int, default=4096)
    p.add_argument("--val-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="keep the studies here (default: a temporary folder)")
    args = p.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="convrnn-search-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    space = yaml.safe_load(DEFAULT_SPACE.read_text()) | {"train": TRAIN_SPACE}
    (root / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    train = dict(
        data="clutter",
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        image_size=32,
        width=args.width,
        times=args.times,
        seed=args.seed,
        train_size=args.train_size,
        val_size=args.val_size,
        threads=1,
        checkpoint_every=10_000,  # no mid-run checkpoints: nothing here is resumed
    )
    common = dict(
        space=str(root / "space.yaml"),
        trials=args.trials,
        startup_trials=args.startup_trials,
        prune_every=args.prune_every,
        min_resource=args.min_resource,
        reduction_factor=args.reduction_factor,
        train=train,
    )
    arms = [
        SearchConfig(study="pruned", out=str(root / "pruned"), pruner=args.pruner, **common),
        SearchConfig(study="full", out=str(root / "full"), pruner="none", **common),
    ]
    print(
        f"TPE (multivariate, {args.startup_trials} random startup trials, seed {args.seed}), {args.trials} trials per arm; "
        f"the default space's cells and feedback, AdamW; "
        f"trial: rgc_shallow width {args.width}, 32 px, {args.times} steps, {args.max_steps} optimizer steps of "
        f"{args.batch_size} on {args.train_size} cluttered digits, top-1 on {args.val_size}; "
        f"pruning: {args.pruner} (reduction {args.reduction_factor}, first rung at {args.min_resource} steps), "
        f"reports every {args.prune_every} steps",
        flush=True,
    )
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_run, args=(cfg, results)) for cfg in arms]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode for proc in procs):
            raise SystemExit("an arm failed (see above)")
        res = dict(results)
    for name in ("pruned", "full"):
        r = res[name]
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(r["counts"].items()))
        print(
            f"{name:6s}: {r['steps']:6d} optimizer steps, {r['seconds']:6.0f} s, best top-1 {r['best_acc']:.4f} "
            f"(trial {r['best_trial']}); trials: {counts}"
        )
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    ratio = res["pruned"]["steps"] / res["full"]["steps"]
    print(
        f"compute_ratio={ratio:.3f} best_acc_pruned={res['pruned']['best_acc']:.4f} best_acc_full={res['full']['best_acc']:.4f}"
    )


if __name__ == "__main__":
    main()
