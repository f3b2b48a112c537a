"""``convrnn fit`` and ``convrnn ost``: a model against recordings, bin by bin, from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convrnn.model import ConvRNN
from convrnn.neural.assembly import image_paths, load_assembly, model_features, save_assembly
from convrnn.neural.recordings import load_recordings
from convrnn.neural.score import ALIGNMENTS, Predictivity, feedforward_features, predictivity, save_predictivity

__all__ = ["add_commands"]


def _neural_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stimuli", type=Path, required=True, help="folder of the images shown (file stem = stimulus_id)")
    p.add_argument("--neural", type=Path, required=True, help="recordings (NetCDF, presentation x neuroid x time_bin)")
    p.add_argument("--region", default="IT", help="recorded region to use, and the model area to compare (default IT)")
    p.add_argument("--areas", nargs="+", help="model layers/areas to use (default: the region's alias)")
    p.add_argument("--times", type=int, default=26, help="steps to unroll with the neural presentation (default 26)")
    p.add_argument("--offset-ms", type=float, default=0.0, help="model step t stands for t*10 ms + offset (default 0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--features", type=Path, help="cache of the model's features (NetCDF): read if present, else written"
    )
    p.add_argument("--out", type=Path, default=Path("neural_fit"), help="folder for the JSON and PNG")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits (and of random initial weights)")


def _features(model: ConvRNN, args: argparse.Namespace, areas: list[str]):
    """The model's features, from the cache file when it holds this model's, else computed (and cached)."""
    if args.features is not None and args.features.is_file():
        feats = load_assembly(args.features)
        if feats.attrs.get("model") == model.spec.name and int(feats.sizes["time_bin"]) == args.times:
            return feats
    feats = model_features(
        model, args.stimuli, areas=areas, times=args.times, batch_size=args.batch_size, progress=True
    )
    if args.features is not None:
        save_assembly(feats, args.features)
    return feats


def cmd_fit(args: argparse.Namespace, build: Callable[[argparse.Namespace], ConvRNN]) -> int:
    import torch

    torch.manual_seed(args.seed)
    model = build(args).eval()
    rec = load_recordings(args.neural, region=args.region)
    areas = args.areas or [args.region]
    image_paths(args.stimuli)  # fail on a bad folder before the model runs
    feats = _features(model, args, areas)
    common = dict(
        mapping=args.mapping, n_components=args.components, alpha=args.alpha, n_splits=args.splits, seed=args.seed
    )
    results: list[Predictivity] = [
        predictivity(feats, rec, alignment="steps", offset_ms=args.offset_ms, name=model.spec.name, **common)
    ]
    if not args.no_control:
        ctrl_areas = args.control_areas or [a for a in ("V4", "pIT", "cIT-aIT") if a in model.spec.areas] or areas
        ff_uniform = feedforward_features(model, args.stimuli, areas=areas, batch_size=args.batch_size)
        ff_graded = feedforward_features(model, args.stimuli, areas=ctrl_areas, batch_size=args.batch_size)
        name = f"{model.spec.name} feedforward sweep"
        results.append(predictivity(ff_uniform, rec, alignment="uniform", name=name, **common))
        results.append(predictivity(ff_graded, rec, alignment="graded", name=name, **common))
    _print_table(results)
    js, png = save_predictivity(results, args.out, title=f"{model.spec.name} vs {rec.source} ({args.region})")
    print(f"wrote {js} and {png}")
    return 0


def _print_table(results: list[Predictivity]) -> None:
    first = results[0]
    ceiled = first.ceiled is not None
    heads = [f"{r.alignment}" for r in results]
    print(f"{'bin (ms)':>10s} " + " ".join(f"{h:>9s}" for h in heads) + ("  ceiling" if ceiled else ""))
    for b in range(len(first.bin_start)):
        vals = " ".join(f"{(r.ceiled if ceiled else r.score)[b]:9.3f}" for r in results)
        ceil = f"  {first.ceiling[b]:7.3f}" if ceiled else ""
        print(f"{f'{first.bin_start[b]:g}-{first.bin_end[b]:g}':>10s} {vals}{ceil}")
    what = "noise-corrected (score / ceiling)" if ceiled else "raw (no repetitions: no ceiling)"
    means = ", ".join(f"{r.name} [{r.alignment}] {np.nanmean(r.ceiled if ceiled else r.score):.3f}" for r in results)
    print(f"{what}; mean over bins: {means}")


def add_commands(sub: argparse._SubParsersAction, model_args: Callable, build: Callable) -> None:
    """Register ``fit`` (and ``ost``) on the main parser's subcommands."""
    s = sub.add_parser("fit", help="per-10-ms-bin predictivity of a model (and a feedforward control) for recordings")
    model_args(s)
    _neural_args(s)
    s.add_argument("--mapping", default="pls", choices=("pls", "ridge"))
    s.add_argument("--components", type=int, default=25, help="PLS components (default 25)")
    s.add_argument("--alpha", type=float, default=1.0, help="ridge penalty (default 1)")
    s.add_argument("--splits", type=int, default=10, help="cross-validation splits, 90/10 stratified by object")
    s.add_argument("--control-areas", nargs="+", help="layers/areas of the graded control (default V4 pIT cIT-aIT)")
    s.add_argument("--no-control", action="store_true", help="skip the feedforward controls")
    s.set_defaults(fn=lambda a: cmd_fit(a, build), alignments=ALIGNMENTS)
