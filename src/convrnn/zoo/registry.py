"""The model registry: every named model is a spec builder plus metadata about its released weights."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convrnn.model import ConvRNN
from convrnn.spec import ModelSpec

CITATION = (
    "Nayebi, Bear, Kubilius, Kar, Ganguli, Sussillo, DiCarlo, Yamins (2018). Task-Driven Convolutional "
    "Recurrent Models of the Visual System. NeurIPS. / Nayebi, Sagastuy-Brena, Bear, Kar, Kubilius, "
    "Ganguli, Sussillo, DiCarlo, Yamins (2022). Recurrent Connections in the Primate Ventral Visual "
    "Stream Mediate a Trade-Off Between Task Performance and Network Size During Core Object "
    "Recognition. Neural Computation 34(8)."
)
CHECKPOINT_URL = "https://convrnnckpts.s3-us-west-1.amazonaws.com/{name}/"


@dataclass
class WeightsInfo:
    """What is known about a zoo model's released (TensorFlow) weights."""

    source: str  # the reference model name the checkpoint is published under
    top1: float | None = None  # ImageNet val top-1 (%) reported by the reference
    top5: float | None = None
    image_size: int = 224
    presentation: str = "default"
    decoder: str = "last"
    url: str = ""
    license: str = "MIT (declared in the reference's setup.py)"
    citation: str = CITATION


def released(name: str, top1: float, top5: float | None = None, **kw: Any) -> WeightsInfo:
    """Metadata of a checkpoint the reference released under ``name`` (5.3 GB for all 20)."""
    return WeightsInfo(source=name, top1=top1, top5=top5, url=CHECKPOINT_URL.format(name=name), **kw)


@dataclass
class ModelEntry:
    name: str
    builder: Callable[..., ModelSpec]
    weights: WeightsInfo | None = None
    tags: list[str] = field(default_factory=list)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, weights: WeightsInfo | None = None
) -> Callable[[Callable[..., ModelSpec]], Callable[..., ModelSpec]]:
    """Register a builder ``(num_classes, image_size, width, **kw) -> ModelSpec`` under ``name``."""

    def deco(fn: Callable[..., ModelSpec]) -> Callable[..., ModelSpec]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, weights)
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = fnmatch.filter(_REGISTRY, f"*{name.split('_')[0]}*")
        hint = f"; did you mean {', '.join(sorted(close))}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (see convrnn.list_models())")
    return _REGISTRY[name]


def model_spec(name: str, **kwargs: Any) -> ModelSpec:
    """The spec of a registered model, built with the builder's keyword arguments."""
    return model_entry(name).builder(**kwargs)


def create_model(
    name: str | ModelSpec,
    *,
    weights: str | Path | None = None,
    unroll: str = "biological",
    fast: bool = True,
    **overrides: Any,
) -> ConvRNN:
    """Build a model by registered name (or from a spec), optionally loading weights.

    Args:
        name: a registered name (see :func:`list_models`) or a :class:`ModelSpec`.
        weights: a ``.safetensors`` file or a PyTorch state dict (loaded with ``weights_only=True``).
        unroll: ``"biological"`` or ``"standard"``.
        fast: use the fast schedule (same numbers as the naive one).
        **overrides: builder arguments: ``num_classes``, ``image_size``, ``width``, ``times``.
    """
    if isinstance(name, ModelSpec):
        if overrides:
            raise TypeError(f"create_model(spec): builder overrides {sorted(overrides)} apply to named models only")
        spec, entry = name, None
    else:
        entry = model_entry(name)
        spec = entry.builder(**overrides)
    model = ConvRNN(spec.validate(), unroll=unroll, fast=fast)
    if entry is not None and entry.weights is not None:
        model.pretrained_cfg = dict(vars(entry.weights))
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: ConvRNN, path: str | Path) -> None:
    """Load a state dict from ``.safetensors`` or a torch file; mismatches raise naming the keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights: no such file {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights {path.name}: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
