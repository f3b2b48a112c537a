"""Train-step speed of the fast unroll vs the naive one, achieved vs peak FLOP/s, and each lever.

Everything is measured in one run on this machine (timings drift between runs and other jobs share
the cores; the ratios within a run are what count). The configurations are timed in interleaved
rounds so that drift hits them alike; each time is the median over the rounds.

- **naive**: ``fast=False`` (every layer, every sample, every step), NCHW, float32 -- the plain
  unroll of the same math.
- **fast**: the fast schedule (batch-1 sharing of activity the stimulus has not reached, skipping
  (layer, step) pairs that cannot reach the loss, reuse of work whose inputs repeat) in
  channels-last memory, float32. Tested equal to the naive schedule (``tests/test_unroll.py``).
- **levers**, each the fast configuration with one thing changed: NCHW instead of channels-last;
  the RGC's two gate convolutions per state fused into one (``fuse_convs``); bf16 autocast;
  ``--compile`` adds ``model.compile_steps()`` (its compile time is printed apart and left out of
  the step time).
- **cost per step** of the fast train step for T in {8, 16, 26}.

Peak: the best of a 2048^2 float32 matmul and the model's own convolutions (forward; every shape
that carries at least 5% of the step's convolution FLOPs), all timed here and now. Achieved: FLOPs
of one fast train step (``torch.utils.flop_counter``, the useful work: the naive schedule's extra
work is not counted) over its median time. bf16 is compared with the bf16 peak measured the same way.
Where the rest goes: every convolution call of the fast step (forward and backward, by its exact
shapes and strides) timed alone on fresh tensors, summed: the step's time if nothing but the
convolution kernels cost anything; the remainder is the recurrence's overhead.

Times are wall clock; with ``--threads 1 --clock thread`` they are the CPU time of the one thread,
which other processes preempting it do not inflate (useful on a shared machine).

Last line: ``speedup_vs_naive=X peak_fraction=Y`` (fast float32 vs naive float32).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import convrnn
from convrnn.cells import RGCCell


def build(
    args: argparse.Namespace, *, fast: bool = True, channels_last: bool = True, fuse: bool = False
) -> convrnn.ConvRNN:
    torch.manual_seed(0)
    model = convrnn.create_model(args.model, num_classes=10, image_size=args.image_size, width=args.width, fast=fast)
    for m in model.modules():
        if isinstance(m, RGCCell):
            m.fuse_convs = fuse
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_step(
    model: convrnn.ConvRNN, x: torch.Tensor, y: torch.Tensor, times: int, bf16: bool = False
) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):  # conv1's weight
        x = x.contiguous(memory_format=torch.channels_last)  # the input in the model's layout

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, times=times).logits[-1]
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


# The clock every time here is read from: wall time, or with ``--clock thread`` (one thread only)
# the CPU time of the thread, which other processes preempting it do not inflate.
CLOCK: Callable[[], float] = time.perf_counter


def interleaved(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each step, timed in interleaved rounds after one warm-up each."""
    for s in steps.values():
        s()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            t0 = CLOCK()
            s()
            times[k].append(CLOCK() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        out.append(CLOCK() - t0)
    return min(out)


class ConvCalls(TorchDispatchMode):
    """Records every convolution call of a step, forward and backward, by its exact arguments: how
    often it ran, fresh tensors of the same shapes, strides and dtype to run it alone, its FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple, list] = {}  # key -> [count, op, fresh arguments, FLOPs of one call]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default):
            key = (func, *(_describe(a) for a in args))
            if key not in self.calls:
                fresh = [_like(a) for a in args]
                flops = FlopCounterMode(display=False)
                with flops:
                    func(*fresh)
                self.calls[key] = [0, func, fresh, flops.get_total_flops()]
            self.calls[key][0] += 1
        return out


def record_convs(step: Callable[[], None]) -> ConvCalls:
    rec = ConvCalls()
    with rec:
        step()
    return rec


def _describe(a: object) -> object:
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), tuple(a.stride()), a.dtype)
    return tuple(a) if isinstance(a, list) else a


def _like(a: object) -> object:
    return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype).normal_() if isinstance(a, torch.Tensor) else a


def peak(rec: ConvCalls, dtype: torch.dtype, repeats: int) -> tuple[float, str]:
    """The best FLOP/s of a 2048^2 matmul and of the step's convolutions (forward, bias-free, each
    shape that carries at least 5% of the step's forward convolution FLOPs), in ``dtype``."""
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    best = (2.0 * n**3 / best_time(lambda: a @ b, repeats), f"{name} matmul {n}x{n}")
    shapes: dict[tuple, list] = {}  # geometry -> [FLOPs in the step, input, weight, FLOPs of one call]
    for count, op, args, flops in rec.calls.values():
        if op is torch.ops.aten.convolution.default:
            x, w, _bias, stride, padding, dilation, _transposed, _out_padding, groups = args
            geometry = (
                tuple(x.shape),
                tuple(x.stride()),
                tuple(w.shape),
                tuple(stride),
                tuple(padding),
                tuple(dilation),
                groups,
            )
            entry = shapes.setdefault(geometry, [0, x, w, flops])
            entry[0] += count * flops
    total = sum(e[0] for e in shapes.values())
    for (xs, _xst, ws, stride, padding, dilation, groups), (in_step, x, w, flops) in shapes.items():
        if in_step < 0.05 * total:
            continue
        x, w = x.to(dtype), w.to(dtype)  # keeps the memory layout
        with torch.no_grad():
            secs = best_time(
                lambda x=x, w=w, s=stride, p=padding, d=dilation, g=groups: F.conv2d(x, w, None, s, p, d, g),
                repeats * 3,
            )
        desc = f"{name} conv {ws[1] * groups}->{ws[0]} {ws[2]}x{ws[3]}/{stride[0]} on {xs}"
        best = max(best, (flops / secs, desc))
    return best


def conv_bound(rec: ConvCalls, repeats: int) -> tuple[float, float, int]:
    """Seconds the step's convolutions (forward and backward) take when each call runs alone at its
    own best speed, their FLOPs, and the number of calls: the step's time with zero overhead
    outside the convolution kernels."""
    secs = sum(n * best_time(lambda op=op, a=args: op(*a), 3 * repeats) for n, op, args, _ in rec.calls.values())
    return secs, sum(n * f for n, _, _, f in rec.calls.values()), sum(n for n, _, _, _ in rec.calls.values())


def flops_of(step: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rgc_shallow")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--times", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time model.compile_steps() (minutes here)")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall", help="thread: CPU time, with --threads 1")
    args = ap.parse_args()
    if args.clock == "thread":
        if args.threads != 1:
            ap.error("--clock thread measures one thread: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch,))
    T = args.times
    load0 = os.getloadavg()[0]

    steps = {
        "naive": train_step(build(args, fast=False, channels_last=False), x, y, T),
        "fast": train_step(build(args), x, y, T),
        "fast, NCHW": train_step(build(args, channels_last=False), x, y, T),
        "fast, fused gate convs": train_step(build(args, fuse=True), x, y, T),
        "fast, bf16 autocast": train_step(build(args), x, y, T, bf16=True),
    }
    secs = interleaved(steps, args.rounds)
    # The fused gate convolutions do the same FLOPs (a layer's last step, which reads one half of
    # each fused pair only, runs its convolutions separately).
    flops = {"naive": flops_of(steps["naive"]), "fast": flops_of(steps["fast"])}
    convs = record_convs(steps["fast"])  # the fast step's convolution calls, for the peak and the bound
    peak32, src32 = peak(convs, torch.float32, args.rounds)
    peak16, src16 = peak(convs, torch.bfloat16, args.rounds)

    print(
        f"{args.model}, {args.image_size} px, T={T}, batch {args.batch}, width {args.width}, train step "
        f"(loss on the last step, SGD); {args.threads} threads; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}; {args.clock} clock; median of {args.rounds} interleaved rounds; "
        f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} (other processes on the cores slow every number)"
    )
    print(f"peak float32: {peak32 / 1e9:.1f} GFLOP/s ({src32}); peak bf16: {peak16 / 1e9:.1f} GFLOP/s ({src16})")
    print(f"{'configuration':28s} {'ms/step':>9s} {'GFLOP':>7s} {'vs fast':>8s}")
    for k, s in secs.items():
        gf = f"{flops.get(k, flops['fast']) / 1e9:7.2f}"
        print(f"{k:28s} {s * 1e3:9.1f} {gf} {secs['fast'] / s:7.2f}x")
    achieved = flops["fast"] / secs["fast"]
    achieved16 = flops["fast"] / secs["fast, bf16 autocast"]
    print(f"fast float32: {achieved / 1e9:.1f} GFLOP/s = {achieved / peak32:.2f} of the float32 peak")
    conv_secs, conv_flops, calls = conv_bound(convs, args.rounds)
    print(
        f"fast float32, its {calls} convolution calls (forward and backward) each timed alone: "
        f"{conv_secs * 1e3:.1f} ms = {conv_secs / secs['fast']:.2f} of the step, {conv_flops / conv_secs / 1e9:.1f} GFLOP/s "
        f"= {conv_flops / conv_secs / peak32:.2f} of the peak; the rest of the step (gates, activations, pooling, "
        f"autograd, Python) {(secs['fast'] - conv_secs) * 1e3:.1f} ms"
    )
    print(
        f"fast bf16 autocast: {secs['fast'] / secs['fast, bf16 autocast']:.2f}x the float32 step, "
        f"{achieved16 / 1e9:.1f} GFLOP/s = {achieved16 / peak16:.2f} of the bf16 peak"
    )

    # Cost per step: the fast train step at several T, interleaved among themselves.
    sweep = {t: train_step(build(args), x, y, t) for t in (8, 16, 26)}
    per_t = interleaved({str(t): s for t, s in sweep.items()}, args.rounds)
    row = "  ".join(f"T={t}: {per_t[str(t)] * 1e3 / t:5.1f} ms/step" for t in sweep)
    grow = [(per_t[str(b)] - per_t[str(a)]) * 1e3 / (b - a) for a, b in ((8, 16), (16, 26))]
    print(
        f"cost per step (fast, float32): {row}; each added step from T=8 to 16: {grow[0]:.1f} ms, "
        f"from 16 to 26: {grow[1]:.1f} ms"
    )

    if args.compile:
        model = build(args)
        names = model.compile_steps()
        step = train_step(model, x, y, T)
        t0 = time.perf_counter()  # compile time: wall clock (compilation runs in other processes)
        step()
        first = time.perf_counter() - t0
        cmp = interleaved({"eager": steps["fast"], "compiled": step}, args.rounds)
        print(
            f"compile_steps ({', '.join(names)}): first step {first:.0f} s (compiling); then "
            f"{cmp['compiled'] * 1e3:.1f} ms vs eager {cmp['eager'] * 1e3:.1f} ms = {cmp['eager'] / cmp['compiled']:.2f}x"
        )

    print(f"speedup_vs_naive={secs['naive'] / secs['fast']:.2f} peak_fraction={achieved / peak32:.2f}")


if __name__ == "__main__":
    main()
