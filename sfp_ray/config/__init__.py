"""Typed, frozen experiment configuration.

One :class:`Config` is built once from YAML and ``--set key=value`` overrides (every key
is listed in ``docs/configuration.md``); unknown keys and bad values raise
:class:`~sfp_ray.errors.ConfigError` with a message naming the dotted key and what is
allowed. Nothing deeper in the code reads nested dicts by string keys.

The package holds one idea per module; its names are re-exported here, so
``from sfp_ray.config import Config, load_config`` is the way to use it:

* :mod:`~sfp_ray.config.schema`: the dataclasses, one per section under :class:`Config`, every
  field with its type, default and meaning (the source of ``docs/configuration.md``);
* :mod:`~sfp_ray.config.conversion`: configurations to and from nested dicts and dotted keys,
  values coerced to their fields' types;
* :mod:`~sfp_ray.config.loading`: YAML files and ``KEY=VALUE`` overrides in, YAML out;
* :mod:`~sfp_ray.config.validation`: value ranges and cross-field constraints.

Example:
    >>> cfg = load_config(overrides=["federation.rounds=2", "data.name=synthetic"])
    >>> cfg.federation.rounds, cfg.data.name
    (2, 'synthetic')
"""

from __future__ import annotations

from sfp_ray.config.conversion import dotted_items, from_dict, set_value, to_dict
from sfp_ray.config.loading import build_config, checkpoint_file, dump_config, load_config, split_assignment
from sfp_ray.config.schema import (
    BypassPool,
    CapacityMap,
    Config,
    CutPolicy,
    DataConfig,
    DevicesConfig,
    FederationConfig,
    ModelConfig,
    NodeLossPolicy,
    Optimizer,
    Partition,
    Precision,
    PretrainConfig,
    ProjectConfig,
    PromptConfig,
    PruneScope,
    PruningConfig,
    PruningPolicy,
    RayConfig,
    ScoreAt,
    ServerLinkPolicy,
    SplitConfig,
    TrainConfig,
)
from sfp_ray.config.validation import GLOBAL_POOLS, validate

__all__ = [
    "GLOBAL_POOLS",
    "BypassPool",
    "CapacityMap",
    "Config",
    "CutPolicy",
    "DataConfig",
    "DevicesConfig",
    "FederationConfig",
    "ModelConfig",
    "NodeLossPolicy",
    "Optimizer",
    "Partition",
    "Precision",
    "PretrainConfig",
    "ProjectConfig",
    "PromptConfig",
    "PruneScope",
    "PruningConfig",
    "PruningPolicy",
    "RayConfig",
    "ScoreAt",
    "ServerLinkPolicy",
    "SplitConfig",
    "TrainConfig",
    "build_config",
    "checkpoint_file",
    "dotted_items",
    "dump_config",
    "from_dict",
    "load_config",
    "set_value",
    "split_assignment",
    "to_dict",
    "validate",
]
