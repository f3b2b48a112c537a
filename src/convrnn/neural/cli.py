"""``convrnn fit`` and ``convrnn ost``: a model against recordings, bin by bin, from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convrnn.files import save_figure, write_json
from convrnn.model import ConvRNN
from convrnn.neural.assembly import image_paths, load_assembly, model_features, save_assembly
from convrnn.neural.fit import CEILING_CONVENTIONS, DEFAULT_CEILING_CONVENTION, DEFAULT_SEED, ODD_REPETITIONS
from convrnn.neural.recordings import Recordings, load_recordings
from convrnn.neural.score import (
    ALIGNMENTS,
    Predictivity,
    aligned_features,
    feedforward_features,
    predictivity,
    save_predictivity,
)

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
        mapping=args.mapping,
        n_components=args.components,
        alpha=args.alpha,
        n_splits=args.splits,
        seed=args.seed,
        spantime=args.spantime,
        ceiling_convention=args.ceiling_convention,
        odd_repetitions=args.odd_repetitions,
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
    """Raw r and, with repetitions, the ceiled score (its convention named) per bin and feature set."""
    first = results[0]
    ceiled = first.ceiled is not None
    cols = [(r, "r") for r in results] + ([(r, "ceiled") for r in results] if ceiled else [])
    heads = [f"{r.alignment} {what}" for r, what in cols]
    print(f"{'bin (ms)':>10s} " + " ".join(f"{h:>15s}" for h in heads) + ("  ceiling" if ceiled else ""))
    for b in range(len(first.bin_start)):
        vals = " ".join(f"{(r.score if what == 'r' else r.ceiled)[b]:15.3f}" for r, what in cols)
        ceil = f"  {first.ceiling[b]:7.3f}" if ceiled else ""
        print(f"{f'{first.bin_start[b]:g}-{first.bin_end[b]:g}':>10s} {vals}{ceil}")
    print("r: median Pearson r over sites, mean over splits (raw)")
    if ceiled:
        print(f"ceiled: noise-corrected, {first.convention} ({_CONVENTION_NOTES[first.convention]})")
    else:
        print("no repetitions in the recordings: no ceiling")
    means = ", ".join(
        f"{r.name} [{r.alignment}] r {np.nanmean(r.score):.3f}"
        + (f", ceiled {np.nanmean(r.ceiled):.3f}" if ceiled else "")
        for r in results
    )
    print(f"mean over bins: {means}")


_CONVENTION_NOTES = {
    "r2/rho": "r^2 / ceiling, Brain-Score 2's explained variance",
    "r/rho": "r / ceiling, Brain-Score 1 and Kar2019; a perfect model scores 1/sqrt(ceiling) > 1",
    "r/sqrt(rho)": "r / sqrt(ceiling), correction for attenuation",
}


def _targets(args: argparse.Namespace, rec: Recordings) -> np.ndarray:
    """The d' each image must reach: a scalar, or per image from a CSV/NetCDF of behavioural d'."""
    if args.behavior is None:
        if args.target_dprime is None:
            raise ValueError("target: give --target-dprime X or --behavior FILE (per-image behavioural d')")
        return np.full(len(rec.stimulus_ids), args.target_dprime)
    path = Path(args.behavior)
    if path.suffix == ".csv":
        import csv

        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "stimulus_id" not in rows[0] or "dprime" not in rows[0]:
            raise ValueError(f"{str(path)!r}: a CSV with columns 'stimulus_id' and 'dprime' is needed")
        table = {r["stimulus_id"]: float(r["dprime"]) for r in rows}
    else:
        da = load_assembly(path)
        if "stimulus_id" not in da.coords or da.ndim != 1:
            raise ValueError(f"{str(path)!r}: a 1-D array with a 'stimulus_id' coordinate is needed")
        table = dict(zip(da.coords["stimulus_id"].values.astype(str), da.values.astype(float)))
    missing = [str(s) for s in rec.stimulus_ids if str(s) not in table]
    if missing:
        raise ValueError(f"{str(path)!r}: no behavioural d' for {len(missing)} recorded stimuli, e.g. {missing[0]!r}")
    return np.array([table[str(s)] for s in rec.stimulus_ids])


def _solution_times(groups: list[tuple[np.ndarray, np.ndarray]], rec: Recordings, target: np.ndarray, args):
    from convrnn.neural.ost import SolutionTimes, image_dprimes, solution_times

    n_bins = len(rec.bin_start)
    D = np.full((n_bins, len(rec.stimulus_ids)), np.nan)
    for bins, X in groups:  # a graded control has one group of bins per layer
        D[bins] = image_dprimes(
            np.ascontiguousarray(X), rec.objects, n_splits=args.splits, seed=args.seed, C=args.C, decoder=args.decoder
        )
    ost = solution_times(D, target, rec.bin_start, rec.bin_end)
    return SolutionTimes(ost, D, target, rec.bin_start, rec.bin_end)


def _per_split(
    groups: list[tuple[np.ndarray, np.ndarray]], rec: Recordings, target: np.ndarray, neural_ost, args, seed: int
):
    """The model's OSTs against the recordings' with Brain-Score's per-split protocol (one feature group)."""
    from convrnn.neural.ost import ost_consistency_per_split

    if len(groups) != 1:
        return None  # a graded control changes layers between bins: its bins are not one feature array
    ((bins, X),) = groups
    return ost_consistency_per_split(
        np.ascontiguousarray(X),
        rec.objects,
        target,
        neural_ost,
        rec.bin_start[bins],
        rec.bin_end[bins],
        n_splits=args.splits,
        seed=seed,
        decoder=args.decoder,
        C=args.C,
    )


def cmd_ost(args: argparse.Namespace, build: Callable[[argparse.Namespace], ConvRNN]) -> int:
    import torch

    from convrnn.neural.ost import ost_consistency

    # One --seed for both; unset, the folds keep 0 and the per-split protocol takes Brain-Score's 1.
    split_seed = DEFAULT_SEED if args.seed is None else args.seed
    args.seed = 0 if args.seed is None else args.seed
    torch.manual_seed(args.seed)
    model = build(args).eval()
    rec = load_recordings(args.neural, region=args.region)
    target = _targets(args, rec)
    areas = args.areas or [args.region]
    image_paths(args.stimuli)
    feats = _features(model, args, areas)
    neural = _solution_times([(np.arange(len(rec.bin_start)), rec.Y)], rec, target, args)
    systems = {model.spec.name: aligned_features(feats, rec, offset_ms=args.offset_ms)}
    if not args.no_control:
        ctrl_areas = args.control_areas or [a for a in ("V4", "pIT", "cIT-aIT") if a in model.spec.areas] or areas
        ff = feedforward_features(model, args.stimuli, areas=ctrl_areas, batch_size=args.batch_size)
        systems[f"{model.spec.name} feedforward sweep [graded]"] = aligned_features(ff, rec, alignment="graded")
    results = {}
    print(f"{'system':44s} {'solved':>7s} {'both':>5s} {'spearman r':>10s} {'p':>8s}")
    print(f"{f'recordings ({args.region})':44s} {int(np.isfinite(neural.ost_ms).sum()):7d}")
    for name, groups in systems.items():
        st = _solution_times(groups, rec, target, args)
        c = ost_consistency(st.ost_ms, neural.ost_ms)
        split = None
        if args.protocol == "per-split":
            split = _per_split(groups, rec, target, neural.ost_ms, args, split_seed)
        results[name] = (st, c, split)
        why = ""
        if not np.isfinite(c.r):
            why = (
                f"  (no correlation: {c.n_images} image(s) solved by both, fewer than 3)"
                if c.n_images < 3
                else "  (no correlation: solution times do not vary over the images solved by both)"
            )
        print(f"{name:44s} {int(np.isfinite(st.ost_ms).sum()):7d} {c.n_images:5d} {c.r:10.3f} {c.p:8.2g}{why}")
        if split is not None:
            print(f"{'  per split (Brain-Score protocol), mean':44s} {'':7s} {'':5s} {split.r:10.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def clean(a: np.ndarray) -> list[float | None]:
        return [None if not np.isfinite(v) else round(float(v), 3) for v in a]

    payload = {
        "region": args.region,
        "stimulus_id": [str(s) for s in rec.stimulus_ids],
        "target_dprime": clean(target),
        "neural_ost_ms": clean(neural.ost_ms),
        "decoder": args.decoder,
        "protocol": args.protocol,
        "systems": {
            name: {
                "ost_ms": clean(st.ost_ms),
                "spearman_r": c.r,
                "n_images": c.n_images,
                "p": c.p,
                **(
                    {"split_mean_spearman_r": split.r, "split_spearman_r": clean(split.split_r)}
                    if split is not None
                    else {}
                ),
            }
            for name, (st, c, split) in results.items()
        },
    }
    write_json(out / "ost.json", payload)
    _plot_ost(out, neural, results, title=f"{model.spec.name} vs {rec.source} ({args.region})")
    print(f"wrote {out / 'ost.json'} and {out / 'ost.png'}")
    return 0


def _plot_ost(out: Path, neural, results: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    t = neural.bin_starts_ms
    axes[0].plot(t, np.nanmean(neural.dprimes, axis=1), color="k", label="recordings")
    for name, (st, c, _) in results.items():
        axes[0].plot(t, np.nanmean(st.dprimes, axis=1), label=name)
        both = np.isfinite(st.ost_ms) & np.isfinite(neural.ost_ms)
        axes[1].scatter(neural.ost_ms[both], st.ost_ms[both], s=8, label=f"{name}: r={c.r:.2f} (n={c.n_images})")
    axes[0].axhline(np.nanmean(neural.target_dprime), color="0.6", ls="--", lw=0.8, label="mean target d'")
    axes[0].set_xlabel("time bin start (ms)")
    axes[0].set_ylabel("mean per-image d'")
    axes[1].set_xlabel("recorded OST (ms)")
    axes[1].set_ylabel("model OST (ms)")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, out / "ost.png")


def add_commands(sub: argparse._SubParsersAction, model_args: Callable, build: Callable) -> None:
    """Register ``fit`` (and ``ost``) on the main parser's subcommands."""
    s = sub.add_parser("fit", help="per-10-ms-bin predictivity of a model (and a feedforward control) for recordings")
    model_args(s)
    _neural_args(s)
    s.add_argument("--mapping", default="pls", choices=("pls", "ridge"))
    s.add_argument("--components", type=int, default=25, help="PLS components (default 25)")
    s.add_argument("--alpha", type=float, default=1.0, help="ridge penalty (default 1)")
    s.add_argument("--splits", type=int, default=10, help="cross-validation splits, 90/10 stratified by object")
    s.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"random_state of the splits and the ceiling's halves, and seed of random initial weights "
        f"(default {DEFAULT_SEED}, Brain-Score's)",
    )
    s.add_argument(
        "--spantime",
        action="store_true",
        help="one map across all bins per split (Brain-Score's spantime_pls, its temporal MajajHong2015 "
        "benchmarks) instead of one per bin",
    )
    s.add_argument(
        "--ceiling-convention",
        default=DEFAULT_CEILING_CONVENTION,
        choices=CEILING_CONVENTIONS,
        help="how the noise-corrected score is formed from r and the split-half ceiling rho: r2/rho "
        "(Brain-Score 2's explained variance; a perfect model scores about 1), r/rho (Brain-Score 1, "
        "Kar2019; a perfect model scores 1/sqrt(rho) > 1), r/sqrt(rho) (correction for attenuation). "
        f"Default {DEFAULT_CEILING_CONVENTION}; raw r is always reported beside it",
    )
    s.add_argument(
        "--odd-repetitions",
        default="split",
        choices=ODD_REPETITIONS,
        help="ceiling halves of an odd repetition count: split (4/5 of 9, Brain-Score's; default) or drop "
        "one (4/4, equally reliable halves)",
    )
    s.add_argument("--control-areas", nargs="+", help="layers/areas of the graded control (default V4 pIT cIT-aIT)")
    s.add_argument("--no-control", action="store_true", help="skip the feedforward controls")
    s.set_defaults(fn=lambda a: cmd_fit(a, build), alignments=ALIGNMENTS)

    s = sub.add_parser("ost", help="object solution times (Kar et al. 2019) of a model vs recordings, per image")
    model_args(s)
    _neural_args(s)
    s.add_argument("--target-dprime", type=float, help="d' every image must reach (or per image: --behavior)")
    s.add_argument("--behavior", type=Path, help="per-image behavioural d': CSV (stimulus_id,dprime) or NetCDF")
    s.add_argument("--splits", type=int, default=10, help="cross-validation folds of the per-bin SVMs")
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of the folds (default 0), of --protocol per-split's splits (default {DEFAULT_SEED}, "
        "Brain-Score's) and of random initial weights",
    )
    s.add_argument("--C", type=float, default=0.01, help="linear SVM regularisation (default 0.01)")
    s.add_argument(
        "--decoder",
        default="svm",
        choices=("svm", "logistic"),
        help="per-bin decoder: svm (the papers' linear SVM, Platt-calibrated; default) or logistic "
        "(Brain-Score's softmax readout objective, weight decay 0.463)",
    )
    s.add_argument(
        "--protocol",
        default="pooled",
        choices=("pooled", "per-split"),
        help="pooled (default): every image held out once in k folds, d' and one Spearman r over all images; "
        "per-split: also Brain-Score's Kar2019 protocol for the model (random 10%% test splits, d' and "
        "Spearman r per split, mean over splits)",
    )
    s.add_argument("--control-areas", nargs="+", help="layers/areas of the graded control (default V4 pIT cIT-aIT)")
    s.add_argument("--no-control", action="store_true", help="skip the feedforward control")
    s.set_defaults(fn=lambda a: cmd_ost(a, build), out=Path("neural_ost"))
