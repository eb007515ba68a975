"""sfp-ray: a Ray actor-based simulator of split federated prompt fine-tuning (SFPrompt).

The public surface (pinned by ``tests/test_public_api.py``); names are imported lazily so
that ``import sfp_ray`` stays cheap and torch is loaded only when needed.

Example:
    >>> import sfp_ray
    >>> cfg = sfp_ray.load_config(overrides=["data.name=synthetic", "federation.rounds=1"])
    >>> "sfprompt" in sfp_ray.list_methods()
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "sfp_ray.config",
    "load_config": "sfp_ray.config",
    "create_model": "sfp_ray.models",
    "split_vit": "sfp_ray.models",
    "load_checkpoint": "sfp_ray.models",
    "load_dataset": "sfp_ray.data",
    "partition": "sfp_ray.data",
    "list_datasets": "sfp_ray.data",
    "el2n_scores": "sfp_ray.pruning",
    "fedavg": "sfp_ray.aggregation",
    "list_methods": "sfp_ray.methods",
    "get_method": "sfp_ray.methods",
    "list_devices": "sfp_ray.devices",
    "get_device": "sfp_ray.devices",
    "prepare_run": "sfp_ray.orchestrator",
    "Orchestrator": "sfp_ray.orchestrator",
    "run": "sfp_ray.api",
    "compare": "sfp_ray.api",
    "sweep": "sfp_ray.sweeps",
    "Results": "sfp_ray.api",
    "SerialExecutor": "sfp_ray.executors.serial",
    "RayExecutor": "sfp_ray.executors.ray",
    "start_ray": "sfp_ray.executors.ray",
    "ReportSink": "sfp_ray.reports",
    "project": "sfp_ray.projection",
    "pretrain": "sfp_ray.pretrain",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sfp_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
