"""The dataset registry: raw loaders by name (:func:`register_dataset`, :func:`list_datasets`).

Names are case-insensitive and ``_`` is treated as ``-`` (:func:`~sfp_ray.data.catalog.canonical`);
registering a loader also records its entry in :mod:`sfp_ray.data.catalog`. The built-in
loaders register themselves when :mod:`sfp_ray.data.sources` imports them.
"""

from __future__ import annotations

from collections.abc import Callable

from sfp_ray.data.catalog import canonical, record
from sfp_ray.data.core import ArrayDataset
from sfp_ray.errors import ConfigError

Loader = Callable[[str | None, bool, int], ArrayDataset]
"""A raw loader: ``fn(root, train, seed) -> ArrayDataset`` (native size/channels, all classes)."""

_REGISTRY: dict[str, Loader] = {}


def register_dataset(name: str, num_classes: int | None = None,
                     description: str | None = None) -> Callable[[Loader], Loader]:
    """Registers a raw dataset loader under ``name``.

    Use as a decorator. The loader is called as ``fn(root, train, seed)`` and must return
    an :class:`ArrayDataset` at its native size and channel count, with all classes.
    Names are case-insensitive and ``_`` is treated as ``-``; registering a name again
    replaces the earlier loader.

    Args:
        name: Dataset name, e.g. ``"fashion-mnist"``.
        num_classes: how many classes the dataset has, when known without loading it
            (cost projections and the checks before a run use it; see :func:`dataset_num_classes`).
        description: one line for ``sfp-ray datasets`` (the built-in ones are in
            :mod:`sfp_ray.data.catalog`).

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    key = canonical(name)
    if not key:
        raise ConfigError("data.name: a dataset name must not be empty")

    def decorator(fn: Loader) -> Loader:
        _REGISTRY[key] = fn
        record(key, num_classes, description)
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Returns the registered dataset names, sorted."""
    return sorted(_REGISTRY)
