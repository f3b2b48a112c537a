"""The search space as data: a YAML/JSON file of dimensions, validated, sampled into a model spec.

A space file has four sections (see ``spaces/default.yaml``, the paper's space)::

    base: rgc_shallow              # a zoo model; every RGC layer gets the trial's cell
    cell:                          # RGC options (convrnn.cells.rgc.RGCConfig): one dimension each
      tau_kernel: {low: 1, high: 8}            # a range (int or float by the option's type; log: true, step)
      gate_nonlinearity: [sigmoid, tanh]       # a choice
      layer_norm: false                        # a fixed value
      tau_multiplier: {tied: tau_offset, factor: -1.0}   # derived from another option
    feedback:
      entry: [input, cell, out]    # where the trial's feedback enters RGC layers
      edges: [conv5->conv3, ...]   # candidate long-range edges: each one is in or out
    train:                         # optimiser settings (TrainConfig fields), plus clip: [norm, value, none]
      lr: {low: 1.0e-3, high: 0.3, log: true}

``base`` may also be a spec file (``.yaml``/``.json``, e.g. from ``convrnn spec``), built as it is (at
its own width, image size and classes). A space with only a ``train`` section tunes the optimiser of a
fixed model of any kind (feedforward, any cell): the experiments tune every model they compare this way.

Options a file leaves out keep the base model's values, so a space can search a few dimensions of
any RGC model. ``cell_channels`` is given at width 1 and scaled by the search's ``--width``, as the
zoo scales every channel count (``null`` means the layer's own depth). The base model's feedback
edges are dropped: which feedback exists is the space's to decide. Edges into layers whose cell
takes no feedback enter at ``input`` (concatenated with the feedforward input).

Two samples the RGC would reject map to the nearest architecture it accepts, so every trial trains:
a cell left with no input (``input_to_cell`` and ``cell_residual`` both off) reads the layer input
(``input_to_cell``), and feedback sampled to enter a cell the trial removed (``gate_kernel: 0``)
enters at ``out``. Every error while loading names the file and the field
(``my_space.yaml: cell.tau_kernal: unknown RGC option``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from convrnn.cells.rgc import RGCConfig
from convrnn.errors import SpecError
from convrnn.ops import activation
from convrnn.serialize import from_data
from convrnn.spec import EdgeSpec, ModelSpec
from convrnn.train.config import TrainConfig

DEFAULT_SPACE = Path(__file__).with_name("spaces") / "default.yaml"

# Optimiser settings a space may search; ``clip`` picks which of clip_norm / clip_value applies.
TRAIN_KEYS = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "clip",
    "clip_norm",
    "clip_value",
    "schedule",
    "warmup_steps",
    "loss",
)
CLIP_CHOICES = ("norm", "value", "none")
ENTRIES = ("input", "cell", "out")
SECTIONS = ("base", "cell", "feedback", "train")

_RGC_HINTS = typing.get_type_hints(RGCConfig)
_RGC_OPTIONS = tuple(f.name for f in dataclasses.fields(RGCConfig))
_TRAIN_HINTS = typing.get_type_hints(TrainConfig) | {"clip": Literal["norm", "value", "none"]}


@dataclass
class Dimension:
    """One searched value: fixed, a choice among values, a numeric range, or tied to another option."""

    name: str  # the Optuna parameter name, e.g. "cell.tau_kernel"
    kind: Literal["fixed", "choice", "range", "tied"]
    value: Any = None  # fixed
    choices: tuple[Any, ...] = ()  # choice
    low: float = 0.0  # range
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False
    tied: str = ""  # tied: the option it follows, times factor
    factor: float = 1.0

    def sample(self, trial: Any, drawn: dict[str, Any]) -> Any:
        """The value for ``trial`` (an Optuna trial); ``drawn`` holds this section's values so far."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "range":
            if self.integer:
                step = int(self.step) if self.step is not None else 1
                return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return self.factor * drawn[self.tied]

    @property
    def searched(self) -> bool:
        return self.kind in ("choice", "range")


@dataclass
class CandidateEdge:
    """A long-range feedback edge the search may add (a yes/no dimension)."""

    source: str
    target: str
    include: Dimension
    entry: Dimension | None = None  # this edge's own entry; None: the space's feedback.entry

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass
class Sample:
    """One trial's draw: RGC options, feedback edges, and the training settings it overrides."""

    cell: dict[str, Any] = field(default_factory=dict)
    edges: list[EdgeSpec] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchSpace:
    """A validated search space (see the module docstring for the file format)."""

    base: str
    cell: dict[str, Dimension]
    entry: Dimension
    edges: list[CandidateEdge]
    train: dict[str, Dimension]
    data: dict[str, Any]  # the file's content, to tell whether two spaces are the same
    source: str = "<space>"

    # --- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> SearchSpace:
        """Read and validate a space file (YAML or JSON); ``None`` is the shipped default space."""
        path = Path(path) if path is not None else DEFAULT_SPACE
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError(f"--space: cannot read {str(path)!r} ({e.strerror or e})") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise SpecError(f"{path.name}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
        return cls.from_dict(data, source=path.name)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<space>") -> SearchSpace:
        """Validate plain data; every error names ``source`` and the field."""

        try:
            return cls._from_dict(data, source)
        except SpecError as e:  # the type checks of convrnn.serialize name the field but not the file
            if str(e).startswith(f"{source}: "):
                raise
            raise SpecError(f"{source}: {e}") from None

    @classmethod
    def _from_dict(cls, data: Any, source: str) -> SearchSpace:
        def err(where: str, msg: str) -> SpecError:
            return SpecError(f"{source}: {where}: {msg}")

        if not isinstance(data, dict):
            raise err("(top level)", f"expected a mapping with {', '.join(SECTIONS)}, got {type(data).__name__}")
        for key in data:
            if key not in SECTIONS:
                raise err(str(key), f"unknown section (known: {', '.join(SECTIONS)})")
        base = data.get("base", "rgc_shallow")
        base_spec = _base_spec(base, err)
        rgc_layers = [layer.name for layer in base_spec.layers if isinstance(layer.cell, RGCConfig)]
        # A space with only a train section tunes the optimiser of a fixed model, whatever its cells.
        if not rgc_layers and (data.get("cell") or data.get("feedback")):
            raise err("base", f"{base!r} has no RGC layer to search (a space for it may only have a train section)")

        cell_data = _mapping(data.get("cell", {}), "cell", err)
        cell: dict[str, Dimension] = {}
        for name, raw in cell_data.items():
            where = f"cell.{name}"
            if name not in _RGC_OPTIONS:
                raise err(where, f"unknown RGC option (known: {', '.join(_RGC_OPTIONS)})")
            cell[name] = _dimension(where, raw, _RGC_HINTS[name], err, lambda v, w, n=name: _check_rgc(n, v, w, err))
        _check_ties(cell, "cell", err)

        fb = _mapping(data.get("feedback", {}), "feedback", err)
        for key in fb:
            if key not in ("entry", "edges"):
                raise err(f"feedback.{key}", "unknown field (known: entry, edges)")
        entry = _dimension("feedback.entry", fb.get("entry", "out"), Literal["input", "cell", "out"], err)
        if entry.kind in ("range", "tied"):
            raise err("feedback.entry", "must be one of input, cell, out or a list of them")
        edges = _edges(fb.get("edges", []), base_spec, rgc_layers, err)

        train_data = _mapping(data.get("train", {}), "train", err)
        train: dict[str, Dimension] = {}
        for name, raw in train_data.items():
            where = f"train.{name}"
            if name not in TRAIN_KEYS:
                raise err(where, f"not a searchable training setting (known: {', '.join(TRAIN_KEYS)})")
            train[name] = _dimension(
                where, raw, _TRAIN_HINTS[name], err, lambda v, w, n=name: _check_train(n, v, w, err)
            )
        _check_ties(train, "train", err)
        if "clip" not in train and all(
            k in train and not (train[k].kind == "fixed" and train[k].value is None)
            for k in ("clip_norm", "clip_value")
        ):
            raise err("train.clip", "clip_norm and clip_value are both set; add clip: [norm, value, none] to pick one")
        if "clip" in train:
            clip = train["clip"]
            kinds = clip.choices if clip.kind == "choice" else (clip.value,)
            if "value" in kinds and (
                train.get("clip_value") is None
                or (train["clip_value"].kind == "fixed" and train["clip_value"].value is None)
            ):
                raise err("train.clip_value", "missing: clip: value needs a clip_value (a number or a range)")
        return cls(base, cell, entry, edges, train, data=data, source=source)

    # --- sampling ----------------------------------------------------------------------------------
    def sample(self, trial: Any) -> Sample:
        """Draw every dimension from ``trial`` (an ``optuna.Trial``, or ``optuna.trial.FixedTrial``).

        The draws happen in a fixed order, so a retried trial (whose parameters are fixed) rebuilds
        the same architecture.
        """
        out = Sample()
        for name, dim in self.cell.items():
            if dim.kind != "tied":
                out.cell[name] = dim.sample(trial, out.cell)
        for name, dim in self.cell.items():
            if dim.kind == "tied":
                out.cell[name] = dim.sample(trial, out.cell)
        default_entry = self.entry.sample(trial, {})
        for cand in self.edges:
            if cand.include.sample(trial, {}):
                entry = cand.entry.sample(trial, {}) if cand.entry is not None else default_entry
                out.edges.append(EdgeSpec(cand.source, cand.target, kind="feedback", entry=entry))
        clip = self.train["clip"].sample(trial, {}) if "clip" in self.train else None
        for name, dim in self.train.items():
            if name == "clip" or dim.kind == "tied":
                continue
            # With a clip choice, only the chosen clipping's threshold is drawn.
            if clip is not None and name in ("clip_norm", "clip_value") and name != f"clip_{clip}":
                continue
            out.train[name] = dim.sample(trial, out.train)
        for name, dim in self.train.items():
            if dim.kind == "tied":
                out.train[name] = dim.sample(trial, out.train)
        if clip is None and out.train.get("clip_value") is not None and "clip_norm" not in out.train:
            out.train["clip_norm"] = None  # clipping by value replaces TrainConfig's default clipping by norm
        if clip is not None:  # the other threshold off (clip: norm without clip_norm keeps TrainConfig's 1.0)
            for kind in ("norm", "value"):
                if clip != kind:
                    out.train[f"clip_{kind}"] = None
        return out

    def build_spec(
        self,
        sample: Sample,
        *,
        num_classes: int,
        image_size: int,
        width: float | None = None,
        times: int | None = None,
        name: str | None = None,
    ) -> ModelSpec:
        """The model spec of a sample: the base model with the sampled cell in every RGC layer."""
        from convrnn.zoo import model_spec

        if _is_spec_file(self.base):
            spec = ModelSpec.load(self.base)
            if width is not None:
                raise SpecError(f"width: base {self.base!r} is a spec file, built at its own width; leave width unset")
            from convrnn.zoo import create_model

            classes = create_model(spec).num_classes
            if spec.image_size != image_size or classes != num_classes:
                raise SpecError(
                    f"base: {self.base!r} is for {spec.image_size} px and {classes} classes; "
                    f"the data need {image_size} px and {num_classes} classes"
                )
            if times is not None:
                spec.times = times
        else:
            kw: dict[str, Any] = {"num_classes": num_classes, "image_size": image_size}
            if width is not None:
                kw["width"] = width
            if times is not None:
                kw["times"] = times
            spec = model_spec(self.base, **kw)
        scale = 1.0 if width is None else width
        options = dict(sample.cell)
        if options.get("cell_channels") is not None:
            options["cell_channels"] = max(1, round(options["cell_channels"] * scale))
        for layer in spec.layers:
            if isinstance(layer.cell, RGCConfig):
                cell = dataclasses.replace(layer.cell, **options)
                if cell.use_cell and not (cell.input_to_cell or cell.cell_residual):
                    cell = dataclasses.replace(cell, input_to_cell=True)  # a cell needs an input
                layer.cell = cell
        spec.edges = [e for e in spec.edges if e.kind != "feedback"]
        for e in sample.edges:
            target = spec.layer(e.target).cell
            entry = e.entry
            if not target.takes_feedback:
                entry = "input"
            elif entry == "cell" and not target.use_cell:
                entry = "out"  # the trial removed the cell (gate_kernel 0)
            spec.edges.append(EdgeSpec(e.source, e.target, kind="feedback", entry=entry))
        if name is not None:
            spec.name = name
        return spec.validate()

    @property
    def searched(self) -> list[str]:
        """Names of the dimensions a trial draws."""
        dims = [*self.cell.values(), self.entry, *(c.include for c in self.edges), *self.train.values()]
        dims += [c.entry for c in self.edges if c.entry is not None]
        return [d.name for d in dims if d.searched]


def load_space(path: str | Path | None = None) -> SearchSpace:
    """:meth:`SearchSpace.load`: a space file, or the shipped default (the paper's space)."""
    return SearchSpace.load(path)


# --- validation helpers -----------------------------------------------------------------------------


def _is_spec_file(base: str) -> bool:
    return base.endswith((".yaml", ".yml", ".json"))


def _base_spec(base: Any, err) -> ModelSpec:
    from convrnn.zoo import list_models, model_spec

    if not isinstance(base, str):
        raise err("base", f"expected a zoo model name or a spec file, got {base!r}")
    if _is_spec_file(base):
        try:
            return ModelSpec.load(base)
        except OSError as e:
            raise err("base", f"cannot read spec file {base!r} ({e.strerror or e})") from None
        except SpecError as e:
            raise err("base", f"spec file {base!r}: {e}") from None
    if base not in list_models():
        raise err("base", f"unknown zoo model {base!r} (e.g. {', '.join(list_models('rgc*'))})")
    return model_spec(base)


def _mapping(value: Any, where: str, err) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise err(where, f"expected a mapping, got {type(value).__name__}")
    return value


def _dimension(where: str, raw: Any, hint: Any, err, check=None) -> Dimension:
    """Parse one dimension; values are type-checked against the option's type hint."""

    def value(v: Any, w: str) -> Any:
        v = from_data(hint, v, w)
        if check is not None:
            check(v, w)
        return v

    if isinstance(raw, list):
        if not raw:
            raise err(where, "an empty list of choices")
        choices = tuple(value(v, f"{where}[{i}]") for i, v in enumerate(raw))
        if len(set(map(repr, choices))) != len(choices):
            raise err(where, f"repeated choices in {list(raw)!r}")
        if len(choices) == 1:
            return Dimension(where, "fixed", value=choices[0])
        return Dimension(where, "choice", choices=choices)
    if isinstance(raw, dict):
        if "tied" in raw:
            extra = set(raw) - {"tied", "factor"}
            if extra:
                raise err(f"{where}.{sorted(extra)[0]}", "unknown field for a tied option (known: tied, factor)")
            if not _is_float(hint):
                raise err(where, "only a number option can be tied to another")
            factor = raw.get("factor", 1.0)
            if isinstance(factor, bool) or not isinstance(factor, (int, float)):
                raise err(f"{where}.factor", f"expected a number, got {factor!r}")
            if not isinstance(raw["tied"], str):
                raise err(f"{where}.tied", f"expected an option name, got {raw['tied']!r}")
            return Dimension(where, "tied", tied=raw["tied"], factor=float(factor))
        extra = set(raw) - {"low", "high", "log", "step"}
        if extra:
            raise err(f"{where}.{sorted(extra)[0]}", "unknown field for a range (known: low, high, log, step)")
        for k in ("low", "high"):
            if k not in raw:
                raise err(f"{where}.{k}", "missing: a range needs low and high")
        integer = _is_int(hint)
        if not (integer or _is_float(hint)):
            raise err(where, "a range needs a number option; give a list of choices instead")
        low, high = value(raw["low"], f"{where}.low"), value(raw["high"], f"{where}.high")
        if low is None or high is None:
            raise err(where, "a range's low and high must be numbers")
        if not low < high:
            raise err(where, f"low ({low}) must be below high ({high})")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise err(f"{where}.log", f"expected true/false, got {log!r}")
        if log and low <= 0:
            raise err(f"{where}.low", f"a log range needs low > 0, got {low}")
        step = raw.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise err(f"{where}.step", f"expected a positive number, got {step!r}")
            if log:
                raise err(f"{where}.step", "a log range takes no step")
            if integer and int(step) != step:
                raise err(f"{where}.step", f"an integer option needs an integer step, got {step!r}")
        return Dimension(where, "range", low=low, high=high, log=log, step=step, integer=integer)
    return Dimension(where, "fixed", value=value(raw, where))


def _check_ties(dims: dict[str, Dimension], section: str, err) -> None:
    for name, dim in dims.items():
        if dim.kind != "tied":
            continue
        ref = dims.get(dim.tied)
        if ref is None:
            raise err(f"{section}.{name}.tied", f"{dim.tied!r} is not an option of this section")
        if ref.kind == "tied":
            raise err(f"{section}.{name}.tied", f"{dim.tied!r} is itself tied; tie to a drawn option")
        values = ref.choices if ref.kind == "choice" else (ref.value,) if ref.kind == "fixed" else ()
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise err(f"{section}.{name}.tied", f"{dim.tied!r} is not a number")


def _check_rgc(name: str, value: Any, where: str, err) -> None:
    if isinstance(value, str):
        try:
            activation(value)
        except ValueError as e:
            raise err(where, str(e)) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        lowest = 0 if name == "gate_kernel" else 1
        if value < lowest:
            raise err(where, f"must be >= {lowest}, got {value}")


def _check_train(name: str, value: Any, where: str, err) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if name in ("lr", "clip_norm", "clip_value") and value <= 0:
        raise err(where, f"must be > 0, got {value}")
    if name in ("weight_decay", "momentum", "warmup_steps") and value < 0:
        raise err(where, f"must be >= 0, got {value}")


def _edges(raw: Any, base: ModelSpec, rgc_layers: list[str], err) -> list[CandidateEdge]:
    if not isinstance(raw, list):
        raise err("feedback.edges", f"expected a list of edges such as 'conv5->conv3', got {type(raw).__name__}")
    names = base.layer_names
    depth = _depths(base)
    out: list[CandidateEdge] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        where = f"feedback.edges[{i}]"
        entry = None
        if isinstance(item, str):
            parts = [p.strip() for p in item.split("->")]
            if len(parts) != 2 or not all(parts):
                raise err(where, f"expected 'source->target', got {item!r}")
            src, dst = parts
        elif isinstance(item, dict):
            extra = set(item) - {"source", "target", "entry"}
            if extra:
                raise err(f"{where}.{sorted(extra)[0]}", "unknown field for an edge (known: source, target, entry)")
            src, dst = item.get("source"), item.get("target")
            if "entry" in item:
                entry = _dimension(f"{where}.entry", item["entry"], Literal["input", "cell", "out"], err)
                if entry.kind in ("range", "tied"):
                    raise err(f"{where}.entry", "must be one of input, cell, out or a list of them")
                entry.name = f"feedback.{src}->{dst}.entry"
        else:
            raise err(where, f"expected 'source->target' or a mapping, got {item!r}")
        for end, layer in (("source", src), ("target", dst)):
            if layer not in names:
                raise err(
                    f"{where}.{end}" if isinstance(item, dict) else where, f"unknown layer {layer!r} in {base.name!r}"
                )
        if depth[src] <= depth[dst]:
            raise err(where, f"{src}->{dst} runs forward; a feedback edge runs from a deeper layer to an earlier one")
        if (src, dst) in seen:
            raise err(where, f"duplicate edge {src}->{dst}")
        seen.add((src, dst))
        include = Dimension(f"feedback.{src}->{dst}", "choice", choices=(False, True))
        out.append(CandidateEdge(src, dst, include, entry))
    return out


def _depths(spec: ModelSpec) -> dict[str, int]:
    ff = {e.target: e.source for e in spec.edges if e.kind == "feedforward"}
    depth: dict[str, int] = {}
    for name in spec.layer_names:
        d, node = 0, name
        while node in ff:
            node, d = ff[node], d + 1
        depth[name] = d
    return depth


def _is_int(hint: Any) -> bool:
    return hint is int or (int in typing.get_args(hint) and float not in typing.get_args(hint))


def _is_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


def spec_from_params(space: SearchSpace, params: dict[str, Any], **build: Any) -> ModelSpec:
    """Rebuild a trial's spec from its recorded parameters (``optuna.trial.FrozenTrial.params``)."""
    import optuna

    return space.build_spec(space.sample(optuna.trial.FixedTrial(params)), **build)


__all__ = [
    "DEFAULT_SPACE",
    "CandidateEdge",
    "Dimension",
    "Sample",
    "SearchSpace",
    "load_space",
    "spec_from_params",
]
