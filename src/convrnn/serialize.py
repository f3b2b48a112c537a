"""Typed dataclasses <-> plain data (dicts, lists, numbers) for YAML and JSON, with errors that name
the field (``spec.layers[3].cell.tau_kernal: unknown field for RGCConfig``).

Tagged unions (a field that holds one of several dataclasses, told apart by a key such as ``op`` or
``type``) are registered in :data:`TAGGED` by the modules that define them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from convrnn.errors import SpecError

# (does this type hint name the union?, the tag key, tag -> dataclass)
TAGGED: list[tuple[Callable[[Any], bool], str, dict[str, type]]] = []


def to_data(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {}
        tag = getattr(type(obj), "op", None) or getattr(type(obj), "type", None)
        if isinstance(tag, str):
            out["op" if hasattr(type(obj), "op") else "type"] = tag
        for f in dataclasses.fields(obj):
            out[f.name] = to_data(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_data(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def from_data(tp: Any, data: Any, path: str) -> Any:
    """Build a value of type ``tp`` from plain data; errors name the field by its ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return data
    for match, key, registry in TAGGED:
        if match(tp):
            return _tagged(registry, key, data, path)
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return from_data(inner[0], data, path)
        for a in inner:  # e.g. int | tuple[int, int]
            try:
                return from_data(a, data, path)
            except SpecError:
                continue
        raise SpecError(f"{path}: cannot read {data!r}")
    if origin is Literal:
        if data not in args:
            raise SpecError(f"{path}: {data!r} is not one of {', '.join(map(repr, args))}")
        return data
    if origin is list:
        if not isinstance(data, list):
            raise SpecError(f"{path}: expected a list, got {type(data).__name__}")
        return [from_data(args[0], x, f"{path}[{i}]") for i, x in enumerate(data)]
    if origin is tuple:
        if not isinstance(data, (list, tuple)) or len(data) != len(args):
            raise SpecError(f"{path}: expected a list of {len(args)} items, got {data!r}")
        return tuple(from_data(a, x, f"{path}[{i}]") for i, (a, x) in enumerate(zip(args, data, strict=True)))
    if origin is dict:
        if not isinstance(data, dict):
            raise SpecError(f"{path}: expected a mapping, got {type(data).__name__}")
        return {k: from_data(args[1], v, f"{path}.{k}") for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        return _dataclass_from(tp, data, path)
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SpecError(f"{path}: expected a number, got {data!r}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise SpecError(f"{path}: expected an integer, got {data!r}")
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise SpecError(f"{path}: expected true/false, got {data!r}")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise SpecError(f"{path}: expected a string, got {data!r}")
        return data
    if tp is type(None):
        if data is not None:
            raise SpecError(f"{path}: expected null, got {data!r}")
        return None
    raise SpecError(f"{path}: unsupported field type {tp!r}")


def _tagged(registry: dict[str, type], key: str, data: Any, path: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise SpecError(f"{path}: expected a mapping with a {key!r} key, got {data!r}")
    tag = data[key]
    if tag not in registry:
        raise SpecError(f"{path}.{key}: unknown {key} {tag!r} (known: {', '.join(sorted(registry))})")
    rest = {k: v for k, v in data.items() if k != key}
    return _dataclass_from(registry[tag], rest, path)


def _dataclass_from(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise SpecError(f"{path}.{k}: unknown field for {cls.__name__}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = from_data(hints[name], data[name], f"{path}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{path}.{name}: missing required field")
    return cls(**kwargs)
