"""Neural-fit speed: the vectorised fast path vs the per-bin scikit-learn loop, same data, same run.

Synthetic data of the target size: 26 time bins x 1,000 stimuli x 512 features -> 256 sites, 8
objects, 10 stratified splits, PLS with 25 components (Brain-Score's mapping). Responses have real
structure: Y_b = g_b X_b W + noise, with a dense random map W, features that drift from bin to bin
around an object-structured stimulus code, and a response time course g_b that rises from zero (early
bins are noise only, like the bins before response onset) and decays.

Both paths run here; their r values and predictions must agree to 1e-6 (absolute). If the sklearn
loop would take longer than ``--max-sklearn-s`` it is timed on evenly spaced bins and extrapolated
linearly to all bins (said so in the output); the agreement check is always on values both paths
computed. Timings drift between runs; the ratio within a run is what counts.

Last line: ``speedup_vs_sklearn=X``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from convrnn.neural import fit_per_bin, fit_per_bin_sklearn


def make_data(
    n_bins: int, n_stimuli: int, n_features: int, n_sites: int, n_objects: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    objects = np.arange(n_stimuli) % n_objects
    code = 0.7 * rng.standard_normal((n_objects, n_features))[objects] + rng.standard_normal((n_stimuli, n_features))
    X = code + 0.5 * rng.standard_normal((n_bins, n_stimuli, n_features))
    W = rng.standard_normal((n_features, n_sites)) / np.sqrt(n_features)
    t = np.arange(n_bins) / max(n_bins - 1, 1)
    gain = np.clip(np.sin(np.pi * (t - 0.1) / 0.9), 0.0, None)  # 0 for the first bins, peak near a third
    Y = gain[:, None, None] * (X @ W) + rng.standard_normal((n_bins, n_stimuli, n_sites))
    return X, Y, objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=26)
    parser.add_argument("--stimuli", type=int, default=1000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--sites", type=int, default=256)
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--components", type=int, default=25)
    parser.add_argument("--mapping", choices=("pls", "ridge"), default="pls")
    parser.add_argument("--max-sklearn-s", type=float, default=180.0, help="time budget of the sklearn loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    X, Y, objects = make_data(args.bins, args.stimuli, args.features, args.sites, args.objects, args.seed)
    kw = dict(mapping=args.mapping, n_components=args.components, n_splits=args.splits, seed=args.seed)
    print(
        f"{args.bins} bins x {args.stimuli} stimuli x {args.features} features -> {args.sites} sites, "
        f"{args.objects} objects, {args.splits} splits, mapping={args.mapping}"
        + (f"({args.components})" if args.mapping == "pls" else "")
    )

    with warnings.catch_warnings():
        # Noise-only bins make sklearn's power iteration hit max_iter; both paths do the same there.
        warnings.simplefilter("ignore")
        fast_times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fast = fit_per_bin(X, Y, objects, **kw)
            fast_times.append(time.perf_counter() - t0)
        t_fast = min(fast_times)

        # One bin from the middle first, to see whether the whole loop fits the budget.
        probe = [args.bins // 2]
        t0 = time.perf_counter()
        ref_probe = fit_per_bin_sklearn(X[probe], Y[probe], objects, **kw)
        per_bin = time.perf_counter() - t0
        if per_bin * args.bins <= args.max_sklearn_s:
            bins = [b for b in range(args.bins) if b not in probe]
        else:
            n_sub = max(1, int(args.max_sklearn_s // per_bin) - 1)
            bins = [b for b in np.linspace(0, args.bins - 1, n_sub).round().astype(int).tolist() if b not in probe]
        t0 = time.perf_counter()
        ref_rest = fit_per_bin_sklearn(X[bins], Y[bins], objects, **kw) if bins else None
        t_rest = time.perf_counter() - t0

    timed = probe + bins
    t_sk_timed = per_bin + t_rest
    full = len(timed) == args.bins
    t_sk = t_sk_timed if full else t_sk_timed / len(timed) * args.bins
    order = np.argsort(timed)
    r_ref = np.concatenate([ref_probe.r] + ([ref_rest.r] if ref_rest else []))[order]
    p_ref = np.concatenate([ref_probe.predictions] + ([ref_rest.predictions] if ref_rest else []))[order]
    sel = sorted(timed)
    r_diff = float(np.nanmax(np.abs(fast.r[sel] - r_ref)))
    p_diff = float(np.abs(fast.predictions[sel] - p_ref).max())
    nan_same = bool((np.isnan(fast.r[sel]) == np.isnan(r_ref)).all())
    agree = r_diff <= 1e-6 and p_diff <= 1e-6 and nan_same

    print(f"{'path':<10}{'time_s':>10}{'per_bin_s':>11}  note")
    note = "all bins" if full else f"{len(timed)} of {args.bins} evenly spaced bins, extrapolated linearly"
    print(f"{'sklearn':<10}{t_sk:>10.1f}{t_sk / args.bins:>11.3f}  {note} (measured {t_sk_timed:.1f} s)")
    print(
        f"{'fast':<10}{t_fast:>10.2f}{t_fast / args.bins:>11.3f}  best of {len(fast_times)}: {', '.join(f'{t:.2f}' for t in fast_times)} s"
    )
    print(
        f"agreement on {len(timed)} bins: max|r diff|={r_diff:.2e} max|prediction diff|={p_diff:.2e} same NaNs={nan_same}"
    )
    print(f"score per bin (fast): {np.array2string(fast.score, precision=3, max_line_width=200)}")
    if not agree:
        raise SystemExit("FAIL: fast path and sklearn loop disagree beyond 1e-6")
    print(f"speedup_vs_sklearn={t_sk / t_fast:.1f}")


if __name__ == "__main__":
    main()
