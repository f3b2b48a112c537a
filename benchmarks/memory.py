"""Peak memory of a train step with and without activation checkpointing over time, in one run.

``model.set_grad_checkpointing(True)`` keeps, for every step of every layer, only the step's inputs
(the states of the step before and the other layers' outputs) and recomputes the rest in the
backward pass; ``segment_steps=k`` also checkpoints the network over segments of k steps, so that
only the outputs and states between segments stay through the forward pass (k = the square root of
T, rounded up, unless ``--segment-steps`` says otherwise). This script measures the peak of the
memory allocated during a train step (forward and backward, gradients set to None before it, so
they count) above what was allocated before it, and the time of the step:

- **T=1 step**: one step of every layer at the full batch (the naive schedule at T=1: what one
  time step of the network costs; the fast schedule at T=1 computes nearly nothing, as the stimulus
  reaches only the first layer);
- the fast schedule at T=8/16/26 without checkpointing, with the per-layer checkpoints, and with
  segments too.

On the CPU the peak comes from the profiler's allocation events (``profile_memory=True``); on a GPU
from ``torch.cuda.max_memory_allocated``. Gradients with and without checkpointing are compared too:
the per-layer checkpoints run the very same computation (they agree exactly); segments sum a
weight's gradient over several backward passes (the same float additions in another order).

Last line: ``peak_ratio_T26_ckpt_vs_T1=X time_cost=Y`` (the T=26 peak with segments over the T=1
step's; the T=26 step time with segments over the plain one's).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import convrnn
from convrnn.memory import peak_memory_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rgc_shallow")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--segment-steps", type=int, help="steps per checkpointed segment (default: sqrt(T), rounded up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall", help="thread: CPU time, with --threads 1")
    args = ap.parse_args()
    if args.clock == "thread" and (args.threads != 1 or args.device != "cpu"):
        ap.error("--clock thread measures one CPU thread: use it with --threads 1 on the CPU")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = convrnn.create_model(args.model, num_classes=10, image_size=args.image_size, width=args.width).to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def step_fn(times: int, fast: bool, ckpt: bool, segment: int | None = None) -> Callable[[], None]:
        def step() -> None:
            model.fast = fast
            model.set_grad_checkpointing(ckpt, segment)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x, times=times).logits[-1], y).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return step

    cases = {"T=1 step (every layer, full batch)": step_fn(1, False, False)}
    segs = {t: args.segment_steps or math.ceil(t**0.5) for t in (8, 16, 26)}
    for t in (8, 16, 26):
        cases[f"fast T={t}"] = step_fn(t, True, False)
        cases[f"fast T={t}, checkpointing"] = step_fn(t, True, True)
        cases[f"fast T={t}, ckpt, segments of {segs[t]}"] = step_fn(t, True, True, segs[t])
    peaks, secs, grads = {}, {}, {}
    for name, step in cases.items():
        step()  # warm-up
        peaks[name] = peak_memory_bytes(step, device)
        grads[name] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, step in cases.items():
            t0 = clock()
            step()
            times[name].append(clock() - t0)
    secs = {k: statistics.median(v) for k, v in times.items()}

    print(
        f"{args.model}, {args.image_size} px, batch {args.batch}, width {args.width}, train step (loss on the "
        f"last step), {device}, {args.threads} threads, time ({args.clock} clock): median of {args.rounds} "
        "interleaved rounds"
    )
    base = peaks["T=1 step (every layer, full batch)"]
    print(f"{'':38s} {'peak MiB':>9s} {'vs T=1':>7s} {'ms/step':>9s}")
    for name in cases:
        print(f"{name:38s} {peaks[name] / 2**20:9.1f} {peaks[name] / base:6.2f}x {secs[name] * 1e3:9.1f}")
    for t in (8, 16, 26):
        plain = f"fast T={t}"
        for ckpt in (f"fast T={t}, checkpointing", f"fast T={t}, ckpt, segments of {segs[t]}"):
            # Relative to each gradient's largest entry: segments sum a weight's gradient over
            # several backward passes, a different order of the same float additions.
            diff = max(
                ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item() for a, b in zip(grads[plain], grads[ckpt])
            )
            print(
                f"{ckpt}: {peaks[ckpt] / peaks[plain]:.2f} of the plain peak at "
                f"{secs[ckpt] / secs[plain]:.2f}x the time; max relative gradient difference {diff:.1e}"
            )
    seg26 = f"fast T=26, ckpt, segments of {segs[26]}"
    ratio = peaks[seg26] / base
    cost = secs[seg26] / secs["fast T=26"]
    print(f"peak_ratio_T26_ckpt_vs_T1={ratio:.2f} time_cost={cost:.2f}")


if __name__ == "__main__":
    main()
