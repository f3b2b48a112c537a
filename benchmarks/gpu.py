"""GPU training throughput: ``rgc_intermediate`` at 224 px, bf16 autocast, batch 128 -- images/s and MFU.

    python benchmarks/gpu.py                          # on a CUDA machine (compiling takes minutes)
    python benchmarks/gpu.py --device cpu --smoke     # the same code paths, tiny, on any machine

One train step is the reference's: the default presentation (image for steps 0-11, then the blank),
T=17, cross-entropy on the last step's logits, SGD with Nesterov momentum; the fast schedule,
channels-last memory. Each mode is timed after warm-up steps (the median of ``--steps`` steps):

- ``eager``: plain PyTorch;
- ``compile``: ``model.compile_steps()`` (each layer's cell update compiled by inductor, which fuses
  the gates' elementwise work); its compile time is printed apart;
- ``graph``: the whole train step (forward, backward, optimizer) captured once as a CUDA graph and
  replayed, which removes the per-kernel launch cost of the unroll's many small ops;
- ``compile+graph``: both.

MFU is the model's FLOPs per train step (counted by ``torch.utils.flop_counter`` on the fast
schedule: the useful work, not the recomputation of activation checkpointing) over the step time
and the device's dense bf16 peak (from its datasheet where the name is known, ``--peak-tflops``
otherwise; a bf16 matmul measured in the same run is printed beside it). A mode that runs out of
memory is reported and skipped; ``--checkpointing`` turns on activation checkpointing over time.

Last line: ``best_mode=M images_per_s=X mfu=Y``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import convrnn

# Dense bf16 tensor-core peaks from the datasheets, in TFLOP/s, by a part of the device name.
DATASHEET_BF16_TFLOPS = (("H100 PCIe", 756.5), ("H100 NVL", 835.5), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in DATASHEET_BF16_TFLOPS if key in name), None)


def matmul_peak(device: torch.device, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2.0 * n**3 / best


class Bench:
    """A model, its optimizer and one batch, with the train step in several forms."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.device, self.args = device, args
        model = convrnn.create_model(
            args.model, num_classes=args.classes, image_size=args.image_size, width=args.width
        ).to(device)
        self.model = model.to(memory_format=torch.channels_last)
        self.model.set_grad_checkpointing(args.checkpointing)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
        self.x = x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, args.classes, (args.batch,), device=device)

    def autocast(self) -> contextlib.AbstractContextManager:
        # The cast-weight cache must be off for CUDA graph capture; off everywhere, so that every
        # mode runs (and compiles) under the same autocast state.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(self.x).logits[-1]
        F.cross_entropy(logits.float(), self.y).backward()
        self.opt.step()

    def flops(self) -> int:
        """FLOPs of one train step: the fast schedule's useful work (counted without activation
        checkpointing, whose recomputation the counter would add)."""
        self.model.set_grad_checkpointing(False)
        with FlopCounterMode(display=False) as counter:
            self.step()
        self.model.set_grad_checkpointing(self.args.checkpointing)
        return counter.get_total_flops()

    def graphed(self, warmup: int) -> Callable[[], None]:
        """Capture the whole train step as a CUDA graph (after warm-up on a side stream)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up's blocks, so the graph's own pool has room
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        return graph.replay


def timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and the aot_eager backend: checks the paths")
    ap.add_argument("--model", default="rgc_intermediate")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--classes", type=int, default=1000)
    # The CUDA graph modes last: a capture that fails can leave the device unusable for later modes.
    ap.add_argument("--modes", default="eager,compile,graph,compile+graph")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--compile-backend", default=None, help="default: inductor (aot_eager with --smoke)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    args = ap.parse_args()
    if args.smoke:
        args.image_size, args.batch, args.width, args.classes = 64, 4, 1 / 16, 10
        args.steps, args.warmup = 2, 1
        args.compile_backend = args.compile_backend or "aot_eager"
    backend = args.compile_backend or "inductor"
    modes = args.modes.split(",")
    unknown = set(modes) - {"eager", "graph", "compile", "compile+graph"}
    if unknown:
        ap.error(f"--modes: unknown {', '.join(sorted(unknown))} (known: eager, graph, compile, compile+graph)")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    try:
        bench = Bench(args, device)
        flops = bench.flops()
    except torch.OutOfMemoryError:
        raise SystemExit(
            "out of memory in the first (eager) train step: try --checkpointing or a smaller --batch"
        ) from None
    times = bench.model.spec.times
    bench = None  # type: ignore[assignment]
    measured = matmul_peak(device, 8192 if device.type == "cuda" else 1024)
    sheet = args.peak_tflops * 1e12 if args.peak_tflops else datasheet_peak(device)
    peak = sheet or measured
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.model}, {args.image_size} px, batch {args.batch}, width {args.width}, T={times}, "
        f"bf16 autocast, channels-last, SGD; checkpointing {'on' if args.checkpointing else 'off'}; "
        f"{name}; torch {torch.__version__}"
    )
    src = "datasheet" if sheet else "the measured matmul"
    print(
        f"train step: {flops / 1e12:.3f} TFLOP ({flops / args.batch / 1e9:.1f} GFLOP/image); peak "
        f"{peak / 1e12:.1f} TFLOP/s bf16 ({src}); bf16 matmul measured here: {measured / 1e12:.1f} TFLOP/s"
    )

    results: dict[str, float] = {}
    for mode in modes:
        if "graph" in mode and device.type != "cuda":
            print(f"{mode:14s} skipped: CUDA graphs need a CUDA device")
            continue
        try:
            if "compile" in mode:
                bench = Bench(args, device)  # a fresh model: compiling is a property of the model
                bench.model.compile_steps(backend=backend)
                t0 = time.perf_counter()
                bench.step()
                sync(device)
                print(f"{mode:14s} compile ({backend}): first step {time.perf_counter() - t0:.1f} s")
            else:
                bench = Bench(args, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step = bench.graphed(args.warmup) if "graph" in mode else bench.step
            s = timed(step, device, args.warmup, args.steps)
        except torch.OutOfMemoryError:
            print(f"{mode:14s} out of memory (try --checkpointing or a smaller --batch)")
            bench = None  # type: ignore[assignment]
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # report and go on: one run should give every mode it can
            print(f"{mode:14s} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            bench = None  # type: ignore[assignment]
            continue
        mem = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
        results[mode] = s
        print(
            f"{mode:14s} {s * 1e3:8.1f} ms/step  {args.batch / s:8.1f} images/s  MFU {flops / s / peak:.3f}"
            f"  ({flops / s / measured:.3f} of the measured matmul){mem}"
        )
        del step
        bench = None  # type: ignore[assignment]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if results:
        best = min(results, key=results.get)
        s = results[best]
        print(f"best_mode={best} images_per_s={args.batch / s:.1f} mfu={flops / s / peak:.3f}")


if __name__ == "__main__":
    main()
