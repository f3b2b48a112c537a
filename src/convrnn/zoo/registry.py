"""The model registry: every named model is a spec builder plus metadata about its released weights."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convrnn.errors import SpecError
from convrnn.model import ConvRNN
from convrnn.spec import ModelSpec

CITATION = (
    "Nayebi, Bear, Kubilius, Kar, Ganguli, Sussillo, DiCarlo, Yamins (2018). Task-Driven Convolutional "
    "Recurrent Models of the Visual System. NeurIPS. / Nayebi, Sagastuy-Brena, Bear, Kar, Kubilius, "
    "Ganguli, Sussillo, DiCarlo, Yamins (2022). Recurrent Connections in the Primate Ventral Visual "
    "Stream Mediate a Trade-Off Between Task Performance and Network Size During Core Object "
    "Recognition. Neural Computation 34(8)."
)
CHECKPOINT_BASE_URL = "https://convrnnckpts.s3-us-west-1.amazonaws.com"
CHECKPOINT_URL = CHECKPOINT_BASE_URL + "/{name}/"
# The reference publishes one folder per model holding one single-shard TensorBundle (Saver V2) checkpoint.
CHECKPOINT_FILES = ("model.ckpt.index", "model.ckpt.data-00000-of-00001")
BASE_URL_ENV = "CONVRNN_BASE_URL"  # a mirror of the published folders (same layout), e.g. a lab's server


def _unknown_sizes() -> dict[str, int | None]:
    # The published files' sizes could not be looked up when the zoo was written (no network), and a
    # guessed size would reject a good download: None until measured. The bundle's own CRC32Cs and the
    # server's Content-Length check every download meanwhile.
    return dict.fromkeys(CHECKPOINT_FILES)


@dataclass
class WeightsInfo:
    """What is known about a zoo model's released (TensorFlow) weights, and what is needed to use them.

    ``transforms()`` is the evaluation preprocessing, ``num_params`` the published model's parameter
    count, ``presentation``/``decoder`` how it was trained and read out, ``files`` the checkpoint files
    the published folder holds (name -> size in bytes, ``None`` where not known).
    """

    source: str  # the reference model name the checkpoint is published under
    top1: float | None = None  # ImageNet val top-1 (%) reported by the reference
    top5: float | None = None
    image_size: int = 224
    presentation: str = "default"
    decoder: str = "last"
    url: str = ""  # the published folder: ``url + file`` for each of ``files``
    license: str = "MIT (declared in the reference's setup.py)"
    citation: str = CITATION
    files: dict[str, int | None] = field(default_factory=_unknown_sizes)

    def file_url(self, file: str, base_url: str | None = None) -> str:
        """Where ``file`` is fetched from: ``base_url`` (else ``$CONVRNN_BASE_URL``) + ``/source/file``,
        else the published folder ``url``."""
        base = base_url or os.environ.get(BASE_URL_ENV)
        if base:
            return f"{base.rstrip('/')}/{self.source}/{file}"
        if not self.url:
            raise ValueError(f"{self.source}: no URL for its weights (set --base-url or ${BASE_URL_ENV})")
        return self.url.rstrip("/") + "/" + file

    def transforms(self) -> Callable[[Any], torch.Tensor]:
        """The evaluation preprocessing of a PIL image: resize the short side to ``image_size / 0.875``,
        centre-crop ``image_size``, scale to [0, 1], ImageNet mean/std (as the reference evaluates)."""
        from convrnn.data.images import eval_transform

        return eval_transform(self.image_size)

    @functools.cached_property
    def num_params(self) -> int:
        """Trainable parameters of the published model (computed once from its architecture, on the meta
        device, so that no weights are allocated)."""
        with torch.device("meta"):
            model = ConvRNN(model_spec(self.source).validate())
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def as_dict(self) -> dict[str, Any]:
        """The metadata fields as a plain dict (copies)."""
        return dataclasses.asdict(self)


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


def published_models(pattern: str = "*") -> list[str]:
    """Registered names matching ``pattern`` whose reference weights are published, sorted."""
    return [n for n in list_models(pattern) if _REGISTRY[n].weights is not None]


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
    pretrained: bool = False,
    unroll: str = "biological",
    fast: bool = True,
    **overrides: Any,
) -> ConvRNN:
    """Build a model by registered name (or from a spec), optionally loading weights.

    Args:
        name: a registered name (see :func:`list_models`) or a :class:`ModelSpec`.
        weights: a ``.safetensors`` file or a PyTorch state dict (loaded with ``weights_only=True``).
        pretrained: load the reference's published weights: from the cache if there, else downloaded,
            verified and converted into it (see :func:`convrnn.zoo.pretrained.fetch_weights`; the
            ``CONVRNN_HOME``, ``CONVRNN_BASE_URL`` and ``CONVRNN_OFFLINE`` variables apply). The
            overrides must give the published shapes (they do by default).
        unroll: ``"biological"`` or ``"standard"``.
        fast: use the fast schedule (same numbers as the naive one).
        **overrides: builder arguments: ``num_classes``, ``image_size``, ``width``, ``times``.
    """
    if pretrained and weights is not None:
        raise TypeError("create_model: pass weights= or pretrained=True, not both")
    if isinstance(name, ModelSpec):
        if pretrained:
            raise TypeError("create_model(spec): pretrained=True applies to named models only")
        if overrides:
            raise TypeError(f"create_model(spec): builder overrides {sorted(overrides)} apply to named models only")
        spec, entry = name, None
    else:
        entry = model_entry(name)
        _check_overrides(overrides)
        spec = entry.builder(**overrides)
    model = ConvRNN(spec.validate(), unroll=unroll, fast=fast)
    if entry is not None and entry.weights is not None:
        model.pretrained_cfg = entry.weights.as_dict()
    if pretrained:
        from convrnn.zoo.pretrained import load_pretrained

        load_pretrained(model, entry.name)
    elif weights is not None:
        load_weights(model, weights)
    return model


def _frozen_decoder_scalars(model: ConvRNN, path: Path) -> None:
    """Converted weights carry the checkpoint's frozen decoder temperature/threshold in the spec saved with
    them (they are constants, not state): apply them to a model of the same decoder built by name."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        saved = json.loads(meta["spec"])["readout"]
    except (KeyError, TypeError, ValueError):
        return  # weights without a saved spec (e.g. from `convrnn train`): nothing to carry over
    if saved.get("decoder") != model.spec.readout.decoder:
        return
    frozen = {
        k: float(saved[k])
        for k in ("beta", "threshold")
        if k in saved and isinstance(getattr(model.decoder, k, None), float) and saved[k] != getattr(model.decoder, k)
    }
    if frozen:
        from convrnn.convert.tf_names import set_decoder_scalars

        set_decoder_scalars(model, **frozen)


def _check_overrides(overrides: dict[str, Any]) -> None:
    """Builder arguments a model cannot be built with, named (a builder would fail later, or worse, not)."""
    checks = {
        "image_size": (lambda v: isinstance(v, int) and v >= 32, "an integer >= 32 (px)"),
        "num_classes": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "width": (lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
        "times": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    }
    for name, value in overrides.items():
        if name in checks and (isinstance(value, bool) or not checks[name][0](value)):
            raise SpecError(f"{name}: must be {checks[name][1]}, got {value!r}")


def load_weights(model: ConvRNN, path: str | Path) -> None:
    """Load a state dict from ``.safetensors`` or a torch file; mismatches raise naming the keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights: no such file {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
        _frozen_decoder_scalars(model, path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    # Checked here: load_state_dict would raise a many-line RuntimeError for a shape that differs.
    wrong = [
        f"{k} {tuple(v.shape)} != model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected:
        raise ValueError(f"weights {path.name}: missing {missing}, unexpected {unexpected}")
    if wrong:
        raise ValueError(f"weights {path.name}: shapes differ from the model's: {'; '.join(wrong)}")
    model.load_state_dict(state)
