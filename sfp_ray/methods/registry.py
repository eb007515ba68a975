"""The method objects by name: the built-in ones from their files, and any registered later.

Imported on first use of :func:`get_method` or :func:`register_method` (through
:mod:`sfp_ray.methods`), since building the methods imports torch; the listing itself lives
in :mod:`sfp_ray.methods.catalog`.
"""

from __future__ import annotations

from sfp_ray.methods import catalog, federated, sfprompt, split_learning
from sfp_ray.methods.base import Method

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry (replacing one of the same name), and its entry to the catalogue."""
    _REGISTRY[method.name] = method
    catalog.record(method.info())
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; unknown names list the registered ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise catalog.unknown_method(name) from None


for _module in (sfprompt, federated, split_learning):
    _module.register(register_method)

__all__ = ["get_method", "register_method"]
