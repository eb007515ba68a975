"""The method objects by name: those of every module of this package, and any registered later.

Imported on first use of :func:`get_method` or :func:`register_method` (through
:mod:`sfp_ray.methods`), since building the methods imports torch; the listing itself lives
in :mod:`sfp_ray.methods.catalog`. Every module of ``sfp_ray/methods/`` that defines a
``register(register_method)`` function is imported and registers its methods, in file-name
order: a new method is a new file, with nothing to edit elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil

import sfp_ray.methods as _package
from sfp_ray.methods import catalog
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


for _info in pkgutil.iter_modules(_package.__path__):
    _register = getattr(importlib.import_module(f"{_package.__name__}.{_info.name}"), "register", None)
    if callable(_register):
        _register(register_method)

__all__ = ["get_method", "register_method"]
