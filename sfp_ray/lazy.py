"""Names a package re-exports from its modules, imported on first use (PEP 562).

``sfp_ray``, ``sfp_ray.data``, ``sfp_ray.methods`` and ``sfp_ray.executors.ray`` list their
public names without importing what defines them, so that ``import sfp_ray``, the catalogues
of methods and datasets, and the checks before a run stay free of torch and Ray. Imports
nothing of sfp-ray.

Example:
    >>> getattr_ = lazy_exports("sfp_ray.data", {".catalog": ("dataset_info", "dataset_names")})
    >>> getattr_("dataset_info").__name__
    'dataset_info'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``, which re-exports the names ``modules[m]`` of each module ``m``.

    A module name starting with ``.`` is relative to ``package``. A name is imported on first
    use, then kept in the package's namespace; an unknown one raises ``AttributeError``.
    """
    where = {name: module for module, names in modules.items() for name in names}

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return getattr_


__all__ = ["lazy_exports"]
