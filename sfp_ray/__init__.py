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

from sfp_ray.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "sfp_ray.config": ("Config", "load_config"),
    "sfp_ray.models": ("create_model", "split_vit", "load_checkpoint"),
    "sfp_ray.data": ("load_dataset", "partition", "list_datasets"),
    "sfp_ray.pruning": ("el2n_scores",),
    "sfp_ray.aggregation": ("fedavg",),
    "sfp_ray.methods": ("list_methods", "get_method"),
    "sfp_ray.devices": ("list_devices", "get_device"),
    "sfp_ray.preparation": ("prepare_run",),
    "sfp_ray.orchestrator": ("Orchestrator",),
    "sfp_ray.api": ("run", "compare", "Results"),
    "sfp_ray.sweeps": ("sweep",),
    "sfp_ray.executors.serial": ("SerialExecutor",),
    "sfp_ray.executors.ray": ("RayExecutor", "start_ray"),
    "sfp_ray.reports": ("ReportSink",),
    "sfp_ray.projection": ("project",),
    "sfp_ray.pretrain": ("pretrain",),
}

__all__ = sorted(n for names in _EXPORTS.values() for n in names) + ["__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
