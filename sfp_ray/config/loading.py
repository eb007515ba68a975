"""Loading a configuration: YAML and ``KEY=VALUE`` overrides in, a validated configuration out, YAML back.

:func:`load_config` reads a YAML file of sections, :func:`build_config` applies dotted
overrides (``--set`` on the command line, ``overrides`` from Python) to a nested mapping,
then both coerce (:mod:`sfp_ray.config.conversion`) and validate
(:mod:`sfp_ray.config.validation`). :func:`dump_config` writes the resolved configuration
as YAML, which :func:`build_config` reads back to the same configuration.

Example:
    >>> cfg = load_config(overrides=["federation.rounds=2", "data.name=synthetic"])
    >>> cfg.federation.rounds, cfg.data.name
    (2, 'synthetic')
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sfp_ray.config.conversion import from_dict, to_dict
from sfp_ray.config.schema import Config, ModelConfig
from sfp_ray.config.validation import validate
from sfp_ray.errors import ConfigError, read_yaml_file


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = {}
            node[p] = child
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{p}' is not a section")
        node = child
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k != "mix":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def split_assignment(item: str, flag: str, expected: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``, with one-line errors naming ``flag`` (``--set``, ``--grid``).

    Example:
        >>> split_assignment("federation.rounds = 3", "--set", "KEY=VALUE")
        ('federation.rounds', ' 3')
    """
    if "=" not in item:
        raise ConfigError(f"{flag} {item!r}: expected {expected}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{flag} {item!r}: empty key")
    return key, raw


def build_config(data: Mapping[str, Any] | None = None, overrides: Sequence[str] = (), *,
                 flag: str = "--set") -> Config:
    """Build and validate a Config from a nested mapping plus ``key=value`` overrides.

    ``flag`` names the overrides in error messages (``--set`` on the command line,
    ``overrides`` from Python).
    """
    tree: dict[str, Any] = _merge({}, dict(data or {}))
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(f"{flag}: expected 'KEY=VALUE' strings, got {item!r}")
        key, raw = split_assignment(item, flag, "KEY=VALUE, e.g. federation.rounds=3")
        _set_dotted(tree, key, raw.strip())
    cfg = from_dict(Config, tree, "")
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (), *,
                flag: str = "--set") -> Config:
    """Load a YAML file (optional) and apply ``key=value`` overrides (``flag``: see :func:`build_config`)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml_file(p, "--config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"--config: {p} must hold a mapping of sections at the top level")
        data = dict(loaded)
    return build_config(data, overrides, flag=flag)


def checkpoint_file(model: ModelConfig) -> Path | None:
    """The file ``model.checkpoint`` names, checked to exist; None for ``pretrain`` and ``none``.

    Example:
        >>> checkpoint_file(ModelConfig(checkpoint="pretrain")) is None, checkpoint_file(ModelConfig(checkpoint=None))
        (True, None)
    """
    ck = model.checkpoint
    if ck is None or str(ck).lower() in ("none", "null", "", "pretrain"):
        return None
    p = Path(ck)
    if p.is_dir():
        raise ConfigError(f"model.checkpoint: {p} is a folder, not a checkpoint file")
    if not p.is_file():
        raise ConfigError(f"model.checkpoint: file not found: {p}")
    return p


def dump_config(cfg: Config, extra: Mapping[str, Any] | None = None) -> str:
    """YAML text of the resolved configuration (plus optional extra top-level entries)."""
    d = to_dict(cfg)
    if extra:
        d.update(extra)
    return yaml.safe_dump(d, sort_keys=False)
