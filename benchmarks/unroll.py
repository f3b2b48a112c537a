"""Train-step speed of the fast unroll schedule vs the naive one, and achieved vs peak FLOP/s.

Measured in one run on this machine (timings drift between runs; ratios within a run are what
count). The naive schedule computes every layer for every sample at every step; the fast one shares
batch-independent activity, skips (layer, step) pairs that cannot reach the loss, and reuses work
whose inputs repeat (see ``convrnn.unroll``). Both give the same numbers (tested to 1e-5).

Peak: the better of a large fp32 matmul and a plain convolution at the model's largest conv shape,
both measured here, now. Achieved: FLOPs of one fast train step (counted by
``torch.utils.flop_counter``) over its time.

Last line: ``speedup_vs_naive=X peak_fraction=Y``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import convrnn
from convrnn.ops import SameConv2d


def train_step(
    model: convrnn.ConvRNN, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, times: int
) -> None:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x, times=times).logits[-1], y)
    loss.backward()
    opt.step()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def largest_conv(model: convrnn.ConvRNN, x: torch.Tensor, times: int) -> tuple[torch.nn.Module, torch.Tensor, float]:
    """The conv call with the most FLOPs in one forward pass: (module, its input, flops)."""
    best: list = [None, None, 0.0]

    def hook(mod: torch.nn.Module, args: tuple) -> None:
        inp = args[0]
        o, i, kh, kw = mod.weight.shape
        oh, ow = (inp.shape[-2] + mod.stride - 1) // mod.stride, (inp.shape[-1] + mod.stride - 1) // mod.stride
        flops = 2.0 * inp.shape[0] * o * i * kh * kw * oh * ow
        if flops > best[2]:
            best[:] = [mod, inp.detach().clone(), flops]

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, SameConv2d)]
    with torch.no_grad():
        model(x, times=times)
    for h in handles:
        h.remove()
    return best[0], best[1], best[2]


def peak(model: convrnn.ConvRNN, x: torch.Tensor, times: int, repeats: int) -> tuple[float, str]:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    mm = 2.0 * n**3 / min(timed(lambda: a @ b, repeats))
    conv, inp, flops = largest_conv(model, x, times)
    with torch.no_grad():
        conv(inp)
        cv = flops / min(timed(lambda: conv(inp), repeats * 3))
    o, i, kh, kw = conv.weight.shape
    desc = f"conv {i}->{o} {kh}x{kw}/{conv.stride} on {tuple(inp.shape)}"
    return (mm, f"fp32 matmul {n}x{n}") if mm >= cv else (cv, desc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rgc_shallow")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--times", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch,))
    models, opts = {}, {}
    for fast in (True, False):
        torch.manual_seed(0)
        m = convrnn.create_model(args.model, num_classes=10, image_size=args.image_size, width=args.width, fast=fast)
        models[fast], opts[fast] = m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        train_step(m, x, y, opts[fast], args.times)  # warm-up
    # Interleave the two schedules so drift hits both alike.
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for fast in (True, False):
            times[fast] += timed(lambda f=fast: train_step(models[f], x, y, opts[f], args.times), 1)
    fast_s, naive_s = statistics.median(times[True]), statistics.median(times[False])

    with FlopCounterMode(display=False) as counter:
        train_step(models[True], x, y, opts[True], args.times)
    flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        train_step(models[False], x, y, opts[False], args.times)
    naive_flops = counter.get_total_flops()
    peak_flops, peak_src = peak(models[True], x, args.times, args.repeats)

    achieved = flops / fast_s
    print(
        f"model={args.model} image={args.image_size} T={args.times} batch={args.batch} width={args.width} threads={args.threads}"
    )
    print(f"train step  fast: {fast_s * 1e3:8.1f} ms  {flops / 1e9:7.2f} GFLOP")
    print(f"train step naive: {naive_s * 1e3:8.1f} ms  {naive_flops / 1e9:7.2f} GFLOP")
    print(f"achieved {achieved / 1e9:.1f} GFLOP/s; peak {peak_flops / 1e9:.1f} GFLOP/s ({peak_src})")
    print(f"speedup_vs_naive={naive_s / fast_s:.2f} peak_fraction={achieved / peak_flops:.2f}")


if __name__ == "__main__":
    main()
