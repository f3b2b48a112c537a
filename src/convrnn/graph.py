"""From a :class:`~convrnn.spec.ModelSpec` to modules: shape inference, harbors, layers.

Shapes are inferred analytically from the spec (no dummy forward passes): each layer's input is its
feedforward source's output, extra inputs are resized to it, and every op maps a shape to a shape.
The :class:`Layer` module runs one step of one area:

    harbor: feedforward input first, then the other inputs sorted by layer name, each resized to the
            feedforward input's size (bilinear, align_corners=True). Cells without a feedback path
            see them concatenated before the pre-memory ops; an RGC gets them split off by entry
            point (input / cell / out), the pre-memory ops seeing only the feedforward part.
    pre ops -> cell -> post ops  (``Residual`` ops add the harbor output, as ``residual_add``)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from convrnn.cells import CellContext, State
from convrnn.errors import SpecError
from convrnn.ops import ResidualAdd, SameConv2d, activation, cat_channels, max_pool_same, resize_to, same_out, valid_out
from convrnn.spec import Activation, Conv, GlobalAvgPool, Linear, MaxPool, ModelSpec, Op, Residual

Shape = tuple[int, ...]  # (C, H, W) for maps, (C,) for vectors


@dataclass
class LayerPlan:
    """Inferred shapes around one layer."""

    name: str
    index: int
    depth: int
    ff_source: str | None
    input_shape: Shape  # the feedforward input
    concat_sources: list[str] = field(default_factory=list)  # concatenated before the pre ops
    feedback_sources: dict[str, list[str]] = field(default_factory=dict)  # entry -> sources
    cell_input_shape: Shape = ()
    output_shape: Shape = ()

    def extra_sources(self) -> list[str]:
        """Non-feedforward sources in the order the layer receives them: concatenated, then feedback."""
        return [*self.concat_sources, *(s for srcs in self.feedback_sources.values() for s in srcs)]


def plan_model(spec: ModelSpec) -> dict[str, LayerPlan]:
    """Infer every layer's shapes; raise :class:`SpecError` where channels or sizes cannot work."""
    spec.validate()
    depth = ModelSpec._ff_depths(
        {e.target: e.source for e in spec.edges if e.kind == "feedforward"}, spec.layers[0].name
    )
    order = sorted(range(len(spec.layers)), key=lambda i: depth[spec.layers[i].name])
    plans: dict[str, LayerPlan] = {}
    for i in order:
        layer = spec.layers[i]
        src = spec.feedforward_input(layer.name)
        in_shape = (spec.in_channels, spec.image_size, spec.image_size) if src is None else plans[src].output_shape
        plan = LayerPlan(layer.name, i, depth[layer.name], src, in_shape)
        extras = sorted((e for e in spec.inputs_of(layer.name) if e.kind != "feedforward"), key=lambda e: e.source)
        for e in extras:
            if layer.cell.takes_feedback:
                plan.feedback_sources.setdefault(e.entry, []).append(e.source)
            else:
                plan.concat_sources.append(e.source)
        plans[layer.name] = plan
    # Output shapes do not depend on extra inputs except through the pre ops' input channels, so a
    # first pass without extras gives every source's shape; the second pass includes them.
    for with_extras in (False, True):
        for i in order:
            layer, plan = spec.layers[i], plans[spec.layers[i].name]
            if plan.ff_source is not None:
                plan.input_shape = plans[plan.ff_source].output_shape
            harbor = harbor_shape(plan, plans) if with_extras else plan.input_shape
            shape = _ops_shape(layer.pre, harbor, f"layers[{i}].pre", res_shape=harbor)
            plan.cell_input_shape = shape
            if layer.cell.type not in ("identity", "timedecay") and len(shape) != 3:
                raise SpecError(f"layers[{i}].cell: cell {layer.cell.type!r} needs a spatial input, got shape {shape}")
            shape = (layer.cell.output_channels(shape[0]), *shape[1:])
            out = _ops_shape(layer.post, shape, f"layers[{i}].post", res_shape=harbor)
            if with_extras and out != plan.output_shape:
                raise SpecError(f"layers[{i}]: output shape {out} depends on its extra inputs; give it a conv")
            plan.output_shape = out
    ro = plans[spec.readout.layer].output_shape
    if len(ro) != 1:
        raise SpecError(
            f"readout.layer: {spec.readout.layer!r} outputs shape {ro}; logits need (classes,): end it with 'gap'"
        )
    return plans


def harbor_shape(plan: LayerPlan, plans: dict[str, LayerPlan]) -> Shape:
    """Shape of the harbor output that feeds the pre ops: the feedforward input plus any inputs
    concatenated to it (checking that every extra input, concatenated or feedback, has a map)."""
    shape = plan.input_shape
    for src in plan.extra_sources():
        src_shape = plans[src].output_shape
        if len(src_shape) != 3 or len(shape) != 3:
            raise SpecError(f"edges: {src}->{plan.name} needs spatial maps on both ends (got {src_shape} -> {shape})")
    if plan.concat_sources:
        shape = (shape[0] + sum(plans[s].output_shape[0] for s in plan.concat_sources), *shape[1:])
    return shape


def _ops_shape(ops: list[Op], shape: Shape, where: str, res_shape: Shape) -> Shape:
    for j, op in enumerate(ops):
        w = f"{where}[{j}]"
        if isinstance(op, Conv):
            if len(shape) != 3:
                raise SpecError(f"{w}: conv needs a spatial input, got shape {shape}")
            _c, h, wd = shape
            if op.padding == "same":
                shape = (op.out_channels, same_out(h, op.stride), same_out(wd, op.stride))
            else:
                kh, kw = (min(op.kernel, h), min(op.kernel, wd)) if op.clamp_kernel else (op.kernel, op.kernel)
                if kh > h or kw > wd:
                    raise SpecError(f"{w}: {op.kernel}x{op.kernel} VALID conv on a {h}x{wd} map (set clamp_kernel)")
                shape = (op.out_channels, valid_out(h, kh, op.stride), valid_out(wd, kw, op.stride))
        elif isinstance(op, MaxPool):
            if len(shape) != 3:
                raise SpecError(f"{w}: maxpool needs a spatial input, got shape {shape}")
            shape = (shape[0], same_out(shape[1], op.stride), same_out(shape[2], op.stride))
        elif isinstance(op, GlobalAvgPool):
            if len(shape) != 3:
                raise SpecError(f"{w}: global average pool needs a spatial input, got shape {shape}")
            shape = (shape[0],)
        elif isinstance(op, Linear):
            if len(shape) != 1:
                raise SpecError(f"{w}: fc needs a (B, C) input; add a 'gap' op first (got shape {shape})")
            shape = (op.out_features,)
        elif isinstance(op, Residual) and (len(shape) != 3 or len(res_shape) != 3):
            raise SpecError(f"{w}: residual needs spatial maps, got {res_shape} -> {shape}")
    return shape


# ----------------------------------------------------------------------------------------------
# Op modules
# ----------------------------------------------------------------------------------------------


class ConvOp(nn.Module):
    def __init__(self, op: Conv, in_shape: Shape) -> None:
        super().__init__()
        k: int | tuple[int, int] = op.kernel
        if op.clamp_kernel:
            k = (min(op.kernel, in_shape[1]), min(op.kernel, in_shape[2]))
        self.conv = SameConv2d(in_shape[0], op.out_channels, k, op.stride, op.bias, op.padding)
        self.bn = nn.BatchNorm2d(op.out_channels) if op.batch_norm else None
        self.act = activation(op.activation)

    def forward(self, x: Tensor, res: Tensor | None) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPoolOp(nn.Module):
    def __init__(self, op: MaxPool) -> None:
        super().__init__()
        self.k, self.s = op.kernel, op.stride

    def forward(self, x: Tensor, res: Tensor | None) -> Tensor:
        return max_pool_same(x, self.k, self.s)


class GlobalAvgPoolOp(nn.Module):
    def forward(self, x: Tensor, res: Tensor | None) -> Tensor:
        return x.mean(dim=(-2, -1))


class LinearOp(nn.Module):
    def __init__(self, op: Linear, in_shape: Shape) -> None:
        super().__init__()
        self.fc = nn.Linear(in_shape[0], op.out_features, bias=op.bias)

    def forward(self, x: Tensor, res: Tensor | None) -> Tensor:
        return self.fc(x)


class ActivationOp(nn.Module):
    def __init__(self, op: Activation) -> None:
        super().__init__()
        self.name = op.fn
        self.fn = activation(op.fn)

    def forward(self, x: Tensor, res: Tensor | None) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class ResidualOp(nn.Module):
    def __init__(self, res_shape: Shape, shape: Shape) -> None:
        super().__init__()
        self.add = ResidualAdd(res_shape[0], shape[0], resize=res_shape[1:] != shape[1:])

    def forward(self, x: Tensor, res: Tensor | None) -> Tensor:
        return self.add(x, res)


def _build_ops(ops: list[Op], shape: Shape, res_shape: Shape) -> tuple[nn.ModuleList, Shape]:
    mods = nn.ModuleList()
    for op in ops:
        if isinstance(op, Conv):
            mods.append(ConvOp(op, shape))
        elif isinstance(op, MaxPool):
            mods.append(MaxPoolOp(op))
        elif isinstance(op, GlobalAvgPool):
            mods.append(GlobalAvgPoolOp())
        elif isinstance(op, Linear):
            mods.append(LinearOp(op, shape))
        elif isinstance(op, Activation):
            mods.append(ActivationOp(op))
        elif isinstance(op, Residual):
            mods.append(ResidualOp(res_shape, shape))
        shape = _ops_shape([op], shape, "", res_shape)
    return mods, shape


class Layer(nn.Module):
    """One area: harbor -> pre -> cell -> post, for one time step."""

    def __init__(self, spec: ModelSpec, plan: LayerPlan, plans: dict[str, LayerPlan]) -> None:
        super().__init__()
        layer = spec.layers[plan.index]
        self.name = layer.name
        self.plan = plan
        in_shape = plan.input_shape
        self.in_hw = tuple(in_shape[1:]) if len(in_shape) == 3 else None
        res_shape = harbor_shape(plan, plans)
        self.pre, shape = _build_ops(layer.pre, res_shape, res_shape)
        fb_channels = {e: sum(plans[s].output_shape[0] for s in srcs) for e, srcs in plan.feedback_sources.items()}
        ctx = CellContext(
            in_channels=shape[0],
            hw=tuple(shape[1:]) if len(shape) == 3 else (),
            res_channels=res_shape[0],
            fb_channels=fb_channels,
            res_hw=tuple(res_shape[1:]) if len(res_shape) == 3 else None,
        )
        layer.cell.check_context(ctx, f"layers[{plan.index}].cell")
        self.cell = layer.cell.build(ctx)
        shape = (self.cell.out_channels, *shape[1:])
        self.post, shape = _build_ops(layer.post, shape, res_shape)
        self.has_batchnorm = any(isinstance(m, nn.BatchNorm2d) for m in self.modules())
        # Activation checkpointing (see ConvRNN.set_grad_checkpointing): each step of the layer keeps
        # only its inputs for the backward pass and runs again there.
        self.grad_checkpointing = False
        self._compiled_update: Any = None  # see compile_update

    def init_state(self, like: Tensor) -> State:
        return self.cell.init_state(like)

    def forward(
        self,
        ff: Tensor,
        extras: list[Tensor],
        state: State,
        memo: dict[str, Any] | None = None,
        last: bool = False,
    ) -> tuple[Tensor, State]:
        """One step. ``extras`` follow ``plan.concat_sources`` then ``plan.feedback_sources`` order.

        With a ``memo`` (a dict the caller keeps per layer), the stateless parts of the step (harbor,
        pre ops, the cell's ``prepare``; the post ops) are reused when they would read the very same
        tensors as at the previous step: e.g. the first layers while a still image is shown.
        ``last``: nothing reads the new state (the layer's last needed step), so the cell computes
        its output alone (``Cell.output``) and the state comes back as ``None`` entries.
        """
        key = (ff, *extras)
        # The reuse decisions are taken here, outside the step: a step recomputed for activation
        # checkpointing then reads the same cached tensors it first read.
        cached = (memo["prepared"], memo["res"]) if memo is not None and _same(memo.get("in"), key) else None
        post = (memo["post"], memo["out"]) if memo is not None and "post" in memo else None
        run = self._step
        # BatchNorm in training mode would update its running statistics again when recomputed.
        if self.grad_checkpointing and torch.is_grad_enabled() and not (self.training and self.has_batchnorm):
            # One checkpoint per layer and step keeps only the step's inputs (the states of t-1 and
            # the other layers' outputs, which are kept anyway); a step draws no random numbers.
            run = partial(checkpoint, self._step, use_reentrant=False, preserve_rng_state=False)
        prepared, res, y, state, out = run(ff, extras, state, cached, post, last)
        if memo is not None:
            memo.update({"in": key, "prepared": prepared, "res": res, "post": (y, res), "out": out})
        return out, state

    def _step(
        self,
        ff: Tensor,
        extras: list[Tensor],
        state: State,
        cached: tuple[Any, Tensor] | None,
        post: tuple[tuple[Tensor, Tensor], Tensor] | None,
        last: bool = False,
    ) -> tuple[Any, Tensor, Tensor, State, Tensor]:
        prepared, res = cached if cached is not None else self._prepare(ff, extras, last)
        if last:  # eager even when compiled: one graph per layer, not two
            y, state = self.cell.output(prepared, state), tuple(None for _ in state)
        else:
            update = self.cell.update
            if self._compiled_update is not None and _full_batch(prepared, state):
                update = self._compiled_update
            y, state = update(prepared, state)
        if post is not None and _same(post[0], (y, res)):
            out = post[1]
        else:
            out = y
            for op in self.post:
                out = op(out, res)
        return prepared, res, y, state, out

    def compile_update(self, enable: bool = True, **kwargs: Any) -> None:
        """Run the cell's update compiled by ``torch.compile(**kwargs)`` (``enable=False``: eager).

        Only steps whose every input has the full batch run compiled: the batch-1 steps of the fast
        schedule (activity before the stimulus arrives) and the one step where the two meet run
        eagerly, so the update compiles once per layer instead of once per batch shape.
        """
        self.cell.compiled = enable
        self._compiled_update = torch.compile(self.cell.update, **kwargs) if enable else None

    def _prepare(self, ff: Tensor, extras: list[Tensor], last: bool = False) -> tuple[Any, Tensor]:
        plan = self.plan
        fb: dict[str, Tensor] | None = None
        if extras:
            extras = [resize_to(e, self.in_hw) for e in extras]
            n = len(plan.concat_sources)
            if n:
                ff = cat_channels([ff, *extras[:n]])
            if plan.feedback_sources:
                fb, k = {}, n
                for entry, srcs in plan.feedback_sources.items():
                    fb[entry] = cat_channels(extras[k : k + len(srcs)])
                    k += len(srcs)
        res = x = ff
        for op in self.pre:
            x = op(x, res)
        prepare = self.cell.prepare_output if last else self.cell.prepare
        return prepare(x, res, fb), res


def _full_batch(*trees: Any) -> bool:
    """Whether every tensor in these nested tuples, lists, dicts and dataclasses has the same
    batch size, larger than 1."""
    sizes: set[int] = set()
    stack = list(trees)
    while stack:
        x = stack.pop()
        if isinstance(x, Tensor):
            sizes.add(x.shape[0] if x.dim() else -1)
        elif isinstance(x, (tuple, list)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif is_dataclass(x):
            stack.extend(getattr(x, f.name) for f in fields(x))
    return len(sizes) == 1 and min(sizes) > 1


def _same(a: tuple | None, b: tuple) -> bool:
    return a is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


def zeros_like_output(plan: LayerPlan, like: Tensor) -> Tensor:
    """The zero stand-in for a layer's output before step 0 (batch of 1; broadcast later)."""
    return torch.zeros((1, *plan.output_shape), dtype=like.dtype, device=like.device)
