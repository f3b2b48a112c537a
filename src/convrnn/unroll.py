"""Unrolling a temporal graph in time.

**Biological** unrolling (the reference's ``unroll``): at step t every layer reads its inputs'
outputs from step t-1, so every edge costs one step (~10 ms); only the first layer reads the stimulus
of step t directly. At t=0 all inputs and states are zero. Layer k of a chain therefore first sees
the stimulus at step k-1.

**Standard** unrolling: a full feedforward pass per step (feedforward and skip edges read step t),
feedback edges read step t-1.

**The fast schedule** computes exactly the same numbers with less work:

- Until the stimulus reaches a layer its activity is driven by biases alone and is the same for
  every image: it runs with a batch of 1 and is broadcast. The same holds for any op whose inputs are
  all shared, e.g. the first layer's convolution of the blank frame.
- A (layer, step) pair whose output cannot reach any requested output within the unrolled steps is
  skipped: with the logits of step T-1 requested, layer L is needed only up to step
  T-1 - d(L, readout), d counting the steps along the shortest path.
- At a layer's last needed step nothing reads its new state: the cell computes its output alone
  (the RGC leaves out its cell update, three of the five convolutions of the zoo's cells).
- The stateless parts of a step (harbor, pre-memory ops, the inputs' terms of the cell, post-memory
  ops) are reused when they would read the very same tensors as at the previous step: while a still
  image is shown, the first layers (whose memory is the reference's frozen a = 0) see the same input
  at every step and compute their convolutions once.

``fast=False`` gives the naive schedule: every layer, every sample, every step.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from convrnn.cells import State
from convrnn.data.presentation import Stimulus
from convrnn.graph import LayerPlan, zeros_like_output
from convrnn.ops import expand_batch
from convrnn.spec import ModelSpec

MODES = ("biological", "standard")


def edge_delays(spec: ModelSpec, mode: str) -> dict[tuple[str, str], int]:
    """Steps each edge costs: 1 for every edge (biological); 1 for feedback only (standard)."""
    if mode not in MODES:
        raise ValueError(f"unroll: unknown mode {mode!r} (known: {', '.join(MODES)})")
    return {(e.source, e.target): 1 if mode == "biological" or e.kind == "feedback" else 0 for e in spec.edges}


def _steps_from(spec: ModelSpec, start: str, mode: str, reverse: bool) -> dict[str, float]:
    """Fewest steps along edges from ``start`` (against the edges' direction with ``reverse``)."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for (s, t), d in edge_delays(spec, mode).items():
        a, b = (t, s) if reverse else (s, t)
        graph.setdefault(a, []).append((b, d))
    dist = {name: math.inf for name in spec.layer_names}
    dist[start] = 0
    heap = [(0, start)]
    while heap:  # Dijkstra: edge delays are 0 or 1
        d, node = heapq.heappop(heap)
        if d > dist[node]:
            continue
        for nxt, w in graph.get(node, []):
            if d + w < dist[nxt]:
                dist[nxt] = d + w
                heapq.heappush(heap, (d + w, nxt))
    return dist


def distances_to(spec: ModelSpec, target: str, mode: str) -> dict[str, float]:
    """Fewest steps from each layer to ``target`` (inf where unreachable)."""
    return _steps_from(spec, target, mode, reverse=True)


def first_stimulus_steps(spec: ModelSpec, mode: str = "biological") -> dict[str, float]:
    """The first step at which each layer's output depends on the stimulus."""
    return _steps_from(spec, spec.layers[0].name, mode, reverse=False)


def last_needed_steps(spec: ModelSpec, requested: dict[str, int], mode: str) -> dict[str, int]:
    """For each layer, the last step whose output can still reach a requested (layer, last step)."""
    last = {name: -1 for name in spec.layer_names}
    for target, t_last in requested.items():
        for name, d in distances_to(spec, target, mode).items():
            if d != math.inf:
                last[name] = max(last[name], int(t_last - d))
    return last


def unroll(
    spec: ModelSpec,
    layers: nn.ModuleDict,
    plans: dict[str, LayerPlan],
    order: list[str],
    stimulus: Stimulus,
    times: int,
    record: dict[str, set[int]],
    *,
    mode: str = "biological",
    fast: bool = True,
    segment_steps: int = 0,
) -> dict[str, dict[int, Tensor]]:
    """Run ``times`` steps; return ``out[layer][t]`` (batch expanded) for the requested steps.

    ``segment_steps`` > 0 (with gradients enabled): checkpoint the unroll in segments of that many
    steps; only the outputs and states between segments are kept for the backward pass.
    """
    b = stimulus.batch
    like = stimulus.frame(0)
    kinds = {(e.source, e.target): e.kind for e in spec.edges}
    same_step = mode == "standard"
    requested = {name: max(steps) for name, steps in record.items() if steps}
    last = last_needed_steps(spec, requested, mode) if fast else {name: times - 1 for name in order}

    def widen(t: Tensor | None) -> Tensor | None:
        return t if fast or t is None else expand_batch(t, b)

    for n in order:
        layers[n].cell.begin(fast)
    prev: dict[str, Tensor] = {n: widen(zeros_like_output(plans[n], like)) for n in order}
    states: dict[str, State] = {n: tuple(widen(s) for s in layers[n].init_state(like)) for n in order}
    sources = {n: (plans[n].ff_source, plans[n].extra_sources()) for n in order}

    def run(
        stim: Stimulus, t0: int, t1: int, prev: dict[str, Tensor], states: dict[str, State]
    ) -> tuple[dict[str, Tensor], dict[str, State], dict[tuple[str, int], Tensor]]:
        """Steps t0..t1-1 from the outputs of step t0-1 and the states after it."""
        # Reuse (see Layer.forward) stays within these steps: a segment recomputed in the backward
        # pass must not read tensors that another segment made.
        memos: dict[str, dict] = {n: {} for n in order} if fast else {}
        states = dict(states)
        got: dict[tuple[str, int], Tensor] = {}
        for t in range(t0, t1):
            cur: dict[str, Tensor] = {}
            for name in order:
                if t > last[name]:
                    continue
                ff_src, extra_srcs = sources[name]
                ff = widen(stim.frame(t)) if ff_src is None else (cur if same_step else prev)[ff_src]
                extras = [(cur if same_step and kinds[(s, name)] != "feedback" else prev)[s] for s in extra_srcs]
                y, states[name] = layers[name](ff, extras, states[name], memos.get(name), last=fast and t == last[name])
                cur[name] = y
                if name in record and t in record[name]:
                    got[(name, t)] = expand_batch(y, b)
            prev = cur
        return prev, states, got

    if segment_steps and torch.is_grad_enabled():
        got: dict[tuple[str, int], Tensor] = {}
        for t0 in range(0, times, segment_steps):
            prev, states, seg_got = _checkpointed(run, stimulus, t0, min(times, t0 + segment_steps), prev, states)
            got.update(seg_got)
    else:
        _, _, got = run(stimulus, 0, times, prev, states)
    out: dict[str, dict[int, Tensor]] = {n: {} for n in record}
    for (name, t), y in got.items():
        out[name][t] = y
    return out


def _checkpointed(
    run: Callable, stimulus: Stimulus, t0: int, t1: int, prev: dict[str, Tensor], states: dict[str, State]
) -> tuple[dict[str, Tensor], dict[str, State], dict[tuple[str, int], Tensor]]:
    """``run(stimulus, t0, t1, prev, states)`` keeping only its inputs for the backward pass.

    Reentrant checkpointing: the forward runs without a graph (so nothing inside it, the layers'
    own checkpoints included, keeps anything), the backward pass runs the steps again with a graph
    and backpropagates through them. A non-reentrant checkpoint would keep the inner checkpoints'
    inputs, i.e. every step's. Reentrant checkpoints pass gradients only to tensor arguments, so
    everything is passed flat: the stimulus, the outputs and states, and an empty tensor that
    requires a gradient, so that the steps get one when nothing else does (at t=0 every input is
    a constant).
    """
    names = list(prev)
    layer_names = list(states)
    sizes = [len(states[n]) for n in layer_names]
    frames = stimulus.video if stimulus.video is not None else stimulus.images
    keys: list[tuple[str, int]] = []
    ran: list[str] = []

    def fn(_: Tensor, frames: Tensor, *flat: Tensor | None) -> tuple[Tensor | None, ...]:
        stim = replace(stimulus, **{"video" if stimulus.video is not None else "images": frames})
        p = dict(zip(names, flat[: len(names)]))
        st = dict(zip(layer_names, _split(flat[len(names) :], sizes)))
        p, st, got = run(stim, t0, t1, p, st)
        keys[:], ran[:] = list(got), list(p)
        return (*p.values(), *(s for n in layer_names for s in st[n]), *got.values())

    flat = [*prev.values(), *(s for n in layer_names for s in states[n])]
    needs_grad = torch.empty(0, device=frames.device, requires_grad=True)
    # A step draws no random numbers: no generator state to keep.
    res = checkpoint(fn, needs_grad, frames, *flat, use_reentrant=True, preserve_rng_state=False)
    prev = dict(zip(ran, res[: len(ran)]))
    n_states = sum(sizes)
    states = dict(zip(layer_names, _split(res[len(ran) : len(ran) + n_states], sizes)))
    return prev, states, dict(zip(keys, res[len(ran) + n_states :]))


def _split(flat: Sequence, sizes: list[int]) -> list[tuple]:
    out, k = [], 0
    for n in sizes:
        out.append(tuple(flat[k : k + n]))
        k += n
    return out
