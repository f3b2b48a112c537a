"""Training throughput (images/s of a full train step) in one run: eager fp32 vs bf16 autocast vs
torch.compile, for the built-in task's batch and a 224 px ImageNet-shaped batch.

Prints a table and ratios to eager fp32 measured in this run (timings drift between runs; the
ratios within a run are what count). ``torch.compile`` on CPU takes minutes to compile a 16-step
unroll; its compile time is printed separately and excluded from the step time. Use ``--no-compile``
to skip it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import convrnn


def step_fn(model, x, y, opt, amp: bool):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False):
            logits = model(x).logits
        F.cross_entropy(logits[-1].float(), y).backward()
        opt.step()

    return step


def measure(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rgc_shallow")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [
        ("built-in task", dict(num_classes=10, image_size=32, width=0.25), 64),
        ("ImageNet 224px", dict(num_classes=1000, image_size=224, width=0.25), 8),
    ]
    print(f"{args.model}, {args.threads} threads, median of {args.repeats} train steps")
    print(f"{'batch':16s} {'mode':10s} {'ms/step':>9s} {'img/s':>8s} {'vs eager':>9s}")
    for label, kw, batch in cases:
        torch.manual_seed(0)
        x = torch.randn(batch, 3, kw["image_size"], kw["image_size"])
        y = torch.randint(0, kw["num_classes"], (batch,))
        base = None
        modes = [("eager", False, False), ("bf16", True, False)]
        if args.compile:
            modes.append(("compile", False, True))
        for mode, amp, comp in modes:
            torch.manual_seed(0)
            model = convrnn.create_model(args.model, **kw)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
            net = torch.compile(model) if comp else model
            step = step_fn(net, x, y, opt, amp)
            t0 = time.perf_counter()
            step()  # warm-up (and compilation)
            warm = time.perf_counter() - t0
            s = measure(step, args.repeats)
            base = base or s
            extra = f"  (first step incl. compile {warm:.0f} s)" if comp else ""
            print(f"{label:16s} {mode:10s} {s * 1e3:9.1f} {batch / s:8.1f} {base / s:8.2f}x{extra}")


if __name__ == "__main__":
    main()
