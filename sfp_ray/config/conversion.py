"""Conversion between configuration dataclasses and plain data, each value coerced to its field's type.

A configuration becomes a nested dict (:func:`to_dict`) or ``dotted key -> value``
(:func:`dotted_items`); a nested mapping becomes a configuration (:func:`from_dict`) and
one dotted key is set on one (:func:`set_value`). Values are coerced to the field's
annotation (YAML's ``"3"`` for an int, ``none`` for null, ``5,6`` for a list of int); an
unknown key or a value of the wrong type raises :class:`~sfp_ray.errors.ConfigError`
naming the dotted key and what is allowed. Works on any dataclass: it imports nothing of
the schema (:mod:`sfp_ray.config.schema`), whose :meth:`~sfp_ray.config.schema.Config.replace`
uses it.

Example:
    >>> from sfp_ray.config.schema import TrainConfig
    >>> set_value(TrainConfig(), "batch_size", "32").batch_size
    32
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from sfp_ray.errors import ConfigError

#: A configuration dataclass (:class:`~sfp_ray.config.schema.Config` or one of its sections).
C = TypeVar("C")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), suitable for YAML."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        elif isinstance(value, Mapping):
            out[f.name] = dict(value)
        else:
            out[f.name] = value
    return out


def dotted_items(cfg: Any) -> dict[str, Any]:
    """Every key of a configuration as ``dotted key -> value`` (``devices.mix`` stays one mapping).

    Example:
        >>> from sfp_ray.config.schema import Config
        >>> items = dotted_items(Config())
        >>> items["federation.rounds"], items["devices.mix"]["rpi4"]
        (8, 0.5)
    """
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping) and f"{prefix}{k}" != "devices.mix":
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), "")
    return out


def set_value(cfg: C, key: str, value: Any) -> C:
    """A copy with one dotted key set: the key checked and the value coerced to its type, not validated.

    Cross-field and range checks (:func:`~sfp_ray.config.validation.validate`) are left to the caller, who may set
    several keys first (a sweep checks each value's type, then every combination).

    Example:
        >>> from sfp_ray.config.schema import Config
        >>> set_value(Config(), "pruning.keep_ratio", "2").pruning.keep_ratio
        2.0
    """
    return _replace_dotted(cfg, key.split("."), value, "")


def _replace_dotted(obj: Any, parts: list[str], value: Any, prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    name = parts[0]
    if name not in names:
        raise ConfigError(f"{prefix}{'.'.join(parts)}: unknown configuration key; known keys here: "
                          + ", ".join(f"{prefix}{n}" for n in sorted(names)))
    tp = typing.get_type_hints(type(obj))[name]
    if len(parts) == 1:
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"{prefix}{name}: is a section; set one of its keys, e.g. {prefix}{name}.<key>")
        return dataclasses.replace(obj, **{name: _coerce(prefix + name, value, tp)})
    child = getattr(obj, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"{prefix}{'.'.join(parts)}: '{name}' is not a section")
    return dataclasses.replace(obj, **{name: _replace_dotted(child, parts[1:], value, f"{prefix}{name}.")})


def _allowed(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_allowed(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list of integers"
    if origin is not None and origin.__name__ == "Mapping" or tp is Mapping:
        return "a mapping"
    if tp is type(None):
        return "null"
    plain = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    return plain.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Coerce a YAML value to the annotated type or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: got {value!r}, allowed: {', '.join(repr(a) for a in args)}")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null", "~") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: got {value!r}, expected {_allowed(tp)}")
    if origin is tuple:
        if isinstance(value, (int,)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):
            try:
                value = [int(v) for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            except ValueError:
                raise ConfigError(f"{key}: got {value!r}, expected a list of integers") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}, expected a list of integers")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if origin is not None and getattr(origin, "__name__", "") == "Mapping":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping like {{name: value}}")
        return {str(k): _coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # YAML reads `--set k=1` as an int
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: got {value!r}, expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}, expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: got {value!r}, expected a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: got {value!r}, expected a string")
    return value


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """An instance of the dataclass ``cls`` from a nested mapping, every value coerced to its field's type.

    Keys left out keep their defaults; ``prefix`` is the dotted key of ``cls`` in error
    messages (``"model."`` for a section). Not validated.

    Example:
        >>> from sfp_ray.config.schema import Config
        >>> from_dict(Config, {"train": {"lr": "3e-3"}}).train.lr
        0.003
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}{key}"
            value = data[key]
            while isinstance(value, Mapping) and len(value) == 1:  # name the whole dotted key
                (sub, value), = value.items()
                where += f".{sub}"
            raise ConfigError(
                f"{where}: unknown configuration key; known keys here: "
                + ", ".join(f"{prefix}{n}" for n in sorted(names))
            )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        value = data[f.name]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{f.name}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = from_dict(tp, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(f"{prefix}{f.name}", value, tp)
    return cls(**kwargs)
