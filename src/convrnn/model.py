"""The ConvRNN module: a spec, its layers, and time as a first-class argument."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from convrnn.data.presentation import make_stimulus
from convrnn.graph import Layer, plan_model
from convrnn.ops import SameConv2d
from convrnn.readout import Decoder
from convrnn.spec import ModelSpec, PresentationSpec
from convrnn.unroll import MODES, first_stimulus_steps, unroll


@dataclass
class ConvRNNOutput:
    """What a forward pass returns: per-step logits and the decoded prediction."""

    logits: Tensor  # (T, B, num_classes), one row per step
    decoded: Tensor  # (B, num_classes), by the spec's readout decoder


class ConvRNN(nn.Module):
    """A convolutional recurrent network unrolled in time.

    ``model(images, times=16)`` shows (B, C, H, W) images per the presentation (or takes a video
    (B, T, C, H, W)) and returns :class:`ConvRNNOutput`. ``model.features(images, areas, times)``
    returns ``feats[area][t]``. Step t covers ``[t * step_ms, (t + 1) * step_ms)`` ms after onset.

    Args:
        spec: the architecture.
        unroll: ``"biological"`` (every edge costs a step; the reference) or ``"standard"``.
        fast: use the fast schedule (exactly the naive one's numbers, less work; see
            :mod:`convrnn.unroll`).
    """

    def __init__(self, spec: ModelSpec, unroll: str = "biological", fast: bool = True) -> None:
        super().__init__()
        if unroll not in MODES:
            raise ValueError(f"unroll: unknown mode {unroll!r} (known: {', '.join(MODES)})")
        self.spec = spec
        self.plans = plan_model(spec)
        self.order = sorted(self.plans, key=lambda n: (self.plans[n].depth, self.plans[n].index))
        self.layers = nn.ModuleDict(
            {layer.name: Layer(spec, self.plans[layer.name], self.plans) for layer in spec.layers}
        )
        r = spec.readout
        self.decoder = Decoder(r.decoder, r.window, r.threshold, r.beta, r.trainable)
        # The reference initialises its readout with N(0, 0.01^2) weights: small logits at the start,
        # whatever the activity below grows to over the unrolled steps.
        for m in self.layers[r.layer].pre.modules():
            if isinstance(m, (nn.Linear, SameConv2d)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.unroll_mode = unroll
        self.fast = fast
        self.segment_steps = 0  # see set_grad_checkpointing
        self.pretrained_cfg: dict[str, Any] | None = None

    # --- speed and memory ------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True, segment_steps: int | None = None) -> None:
        """Activation checkpointing over time, for training with less memory: every step of every
        layer (harbor, pre-memory ops, cell, post-memory ops) keeps only its inputs for the backward
        pass (the states of the step before and the other layers' outputs) and runs again there.
        The same numbers, at the time of about one more forward pass (``benchmarks/memory.py``
        measures both). Layers with BatchNorm are left out while training (recomputing them would
        update their running statistics again).

        ``segment_steps``: also checkpoint the whole network over segments of that many steps
        (about the square root of the steps unrolled is best): only the outputs and states between
        segments are kept through the forward pass, and each segment runs again, with the per-layer
        checkpoints, when the backward pass reaches it. Memory then grows with T / segment_steps +
        segment_steps instead of T, for more time (rgc_shallow, T=26, segments of 6: 1.96x the
        step without checkpointing, against 1.44x with the per-layer ones alone). These checkpoints are
        reentrant: gradients come from ``loss.backward()`` (not ``torch.autograd.grad``), and under
        DistributedDataParallel the gradients must be averaged after the backward pass (forward and
        backward inside ``no_sync()``; ``static_graph=True`` gave wrong gradients), as ``convrnn
        train --grad-checkpointing --segment-steps N`` does. Not used with BatchNorm layers in
        training.
        """
        if segment_steps is not None and (
            isinstance(segment_steps, bool) or not isinstance(segment_steps, int) or segment_steps < 1
        ):
            raise ValueError(f"segment_steps: must be a positive integer or None, got {segment_steps!r}")
        for layer in self.layers.values():
            layer.grad_checkpointing = enable
        self.segment_steps = (segment_steps or 0) if enable else 0

    def compile_steps(self, enable: bool = True, **kwargs: Any) -> list[str]:
        """Compile each layer's per-step recurrence (its cell's update) with ``torch.compile(**kwargs)``;
        return the names of the layers compiled (``enable=False`` returns them all to eager).

        Each compiles once, at its first full-batch step: the fast schedule's batch-1 steps stay
        eager. Cells with a trivial update (identity, time decay) are not compiled. Worth measuring
        first (``benchmarks/unroll.py --compile``): on a 2-core CPU it took minutes to compile and
        ran no faster; the ops it fuses (gates, activations) weigh more on a GPU.
        """
        names = [n for n, layer in self.layers.items() if layer.cell.worth_compiling]
        # Every layer's update shares one code object, whose compiled variants torch caps (8 by
        # default; beyond, it runs eagerly): room for each layer, and a second batch size each.
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older torch
        setattr(config, limit, max(getattr(config, limit), 2 * len(names) + 8))
        for n in names:
            self.layers[n].compile_update(enable, **kwargs)
        return names

    # --- facts ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.plans[self.spec.readout.layer].output_shape[0]

    def first_stimulus_steps(self) -> dict[str, float]:
        """The first step at which each layer's output depends on the stimulus."""
        return first_stimulus_steps(self.spec, self.unroll_mode)

    def step_window_ms(self, t: int) -> tuple[float, float]:
        """The time window (ms after stimulus onset) that step ``t`` stands for."""
        return t * self.spec.step_ms, (t + 1) * self.spec.step_ms

    def area_layers(self, area: str) -> list[str]:
        """The layers behind an area name: a layer itself, or an alias such as ``V4`` or ``IT``."""
        if area in self.layers:
            return [area]
        if area in self.spec.areas:
            return list(self.spec.areas[area])
        known = ", ".join([*self.spec.areas, *self.layers])
        raise KeyError(f"areas: unknown area {area!r} (known: {known})")

    # --- running -------------------------------------------------------------------------------
    def _run(
        self,
        x: Tensor,
        record: dict[str, set[int] | None],
        times: int | None,
        presentation: PresentationSpec | str | None,
        image_off: int | None,
    ) -> tuple[dict[str, dict[int, Tensor]], int]:
        """Unroll; ``record[layer]`` lists the steps to return (``None``: every step)."""
        if x.dim() in (4, 5):
            c, h, w = x.shape[-3:]
            if c != self.spec.in_channels:
                raise ValueError(f"images: expected {self.spec.in_channels} channels, got shape {tuple(x.shape)}")
            if (h, w) != (self.spec.image_size,) * 2:
                raise ValueError(
                    f"images: {self.spec.name!r} is built for {self.spec.image_size}x{self.spec.image_size} inputs, "
                    f"got {h}x{w} (create it with image_size={h})"
                )
        stimulus, implied = make_stimulus(x, presentation, image_off=image_off, default=self.spec.presentation)
        if times is None:
            times = implied or self.spec.times
        if stimulus.video is not None and times > stimulus.video.shape[1]:
            raise ValueError(f"times: {times} steps asked but the video has {stimulus.video.shape[1]} frames")
        if times < 1:
            raise ValueError(f"times: must be >= 1, got {times}")
        # Shared (batch-1) activity must not meet BatchNorm in training mode: its batch statistics
        # would differ. Fall back to the naive schedule there.
        bn_training = self.training and any(layer.has_batchnorm for layer in self.layers.values())
        fast = self.fast and not bn_training
        steps = {k: set(range(times)) if v is None else {t for t in v if t < times} for k, v in record.items()}
        out = unroll(
            self.spec,
            self.layers,
            self.plans,
            self.order,
            stimulus,
            times,
            steps,
            mode=self.unroll_mode,
            fast=fast,
            # A segment run again would update BatchNorm's running statistics again.
            segment_steps=0 if bn_training else self.segment_steps,
        )
        return out, times

    def forward(
        self,
        x: Tensor,
        times: int | None = None,
        presentation: PresentationSpec | str | None = None,
        image_off: int | None = None,
    ) -> ConvRNNOutput:
        """Per-step logits (T, B, K) and the decoded prediction (B, K).

        Args:
            x: images (B, C, H, W), already normalised, or a video (B, T, C, H, W).
            times: steps to unroll (default: the presentation's, else the spec's).
            presentation: ``default``, ``neural``, ``constant`` or a :class:`PresentationSpec`.
            image_off: override the first blank step.
        """
        readout = self.spec.readout.layer
        out, times = self._run(x, {readout: None}, times, presentation, image_off)
        logits = torch.stack([out[readout][t] for t in range(times)])
        return ConvRNNOutput(logits=logits, decoded=self.decode(logits))

    def decode(self, logits: Tensor) -> Tensor:
        """Apply the spec's readout decoder to (T, B, K) logits."""
        # The reference decodes from step num_layers: one after the readout first sees the stimulus.
        start = int(self.first_stimulus_steps()[self.spec.readout.layer]) + 1
        return self.decoder(logits, start)

    def features(
        self,
        x: Tensor,
        areas: Iterable[str] | None = None,
        times: Iterable[int] | int | None = None,
        presentation: PresentationSpec | str | None = None,
        image_off: int | None = None,
    ) -> dict[str, dict[int, Tensor]]:
        """Features per area and step: ``feats[area][t]``.

        A layer name gives its output as is, e.g. (B, C, H, W); an area alias (``V4``, ``pIT``,
        ``cIT-aIT``, ``IT``) gives its layers' outputs flattened and concatenated, (B, N).
        ``times``: the steps to return (an int n means ``range(n)``; default: every step of the
        presentation). Only what these outputs need is computed.
        """
        areas = list(areas) if areas is not None else list(self.layers)
        if isinstance(times, int):
            steps = list(range(times))
        elif times is None:
            steps = None
        else:
            steps = sorted(set(times))
            if steps and steps[0] < 0:
                raise ValueError(f"times: steps must be >= 0, got {steps[0]}")
        n_times = (steps[-1] + 1) if steps else None
        layer_sets = {a: self.area_layers(a) for a in areas}
        wanted = set(steps) if steps is not None else None
        record = {layer: wanted for ls in layer_sets.values() for layer in ls}
        out, total = self._run(x, record, n_times, presentation, image_off)
        steps = steps if steps is not None else list(range(total))
        feats: dict[str, dict[int, Tensor]] = {}
        for area, ls in layer_sets.items():
            if area in self.layers:
                feats[area] = {t: out[area][t] for t in steps}
            else:
                feats[area] = {t: torch.cat([out[layer][t].flatten(1) for layer in ls], dim=1) for t in steps}
        return feats

    forward_intermediates = features
