"""Where dataset files are looked for: ``data.root``, ``$SFP_DATA_ROOT``, then fixed directories.

:func:`dataset_search_path` gives the directories in search order: ``data.root``, then
``$SFP_DATA_ROOT`` (:data:`ENV_DATA_ROOT`), then :data:`DEFAULT_SEARCH_DIRS` (Fashion-MNIST), or
the one torchvision root (:data:`DEFAULT_TORCHVISION_ROOT` when neither is set) for CIFAR and
SVHN. The loaders read these constants here: patch them on this module, not on
:mod:`sfp_ray.data.sources` (which re-exports them) or the :mod:`sfp_ray.data` package.
"""

from __future__ import annotations

import os
from pathlib import Path

from sfp_ray.data.catalog import canonical
from sfp_ray.data.registry import _REGISTRY, list_datasets
from sfp_ray.errors import ConfigError

ENV_DATA_ROOT: str = "SFP_DATA_ROOT"
"""Environment variable naming a data root directory."""

DEFAULT_SEARCH_DIRS: tuple[Path, ...] = (
    Path("data") / "fashion-mnist",
    Path("/usr/share/datasets/fashion-mnist"),
)
"""Fixed directories searched for Fashion-MNIST after ``root`` and ``$SFP_DATA_ROOT``.

The first entry is relative to the current working directory.
"""

DEFAULT_TORCHVISION_ROOT: Path = Path("data")
"""torchvision root used for CIFAR/SVHN when neither ``root`` nor ``$SFP_DATA_ROOT`` is set."""

_TORCHVISION_DATASETS = ("cifar10", "cifar100", "svhn")


def _env_root() -> str | None:
    value = os.environ.get(ENV_DATA_ROOT, "").strip()
    return value or None


def _dedupe(paths: list[Path]) -> list[Path]:
    seen: set[str] = set()
    out: list[Path] = []
    for p in paths:
        k = str(p)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def _torchvision_root(root: str | None) -> Path:
    """Resolves the torchvision root: ``root``, else ``$SFP_DATA_ROOT``, else ``./data``."""
    chosen = root if root else _env_root()
    return Path(chosen).expanduser() if chosen else DEFAULT_TORCHVISION_ROOT


def dataset_search_path(name: str, root: str | None) -> list[Path]:
    """Returns the ordered directories searched for a dataset's files.

    For ``fashion-mnist``: ``root``, ``root/fashion-mnist`` and ``root/FashionMNIST/raw``
    (torchvision's layout) if ``root`` is given; the same three under
    ``$SFP_DATA_ROOT`` if set; then :data:`DEFAULT_SEARCH_DIRS`
    (``./data/fashion-mnist``, ``/usr/share/datasets/fashion-mnist``).

    For ``cifar10``, ``cifar100`` and ``svhn``: the single torchvision root (``root``,
    else ``$SFP_DATA_ROOT``, else ``./data``). Datasets that need no files (``digits``,
    ``synthetic``) and other registered datasets give an empty list.

    Args:
        name: Dataset name.
        root: The ``data.root`` setting, or ``None``.

    Returns:
        Directories in search order, duplicates removed.

    Raises:
        ConfigError: ``name`` is not a registered dataset.
    """
    key = canonical(str(name))
    if key not in _REGISTRY:
        raise ConfigError(
            f"data.name: unknown dataset {name!r}; registered datasets: "
            f"{', '.join(list_datasets())}"
        )
    if key in _TORCHVISION_DATASETS:
        return [_torchvision_root(root)]
    if key != "fashion-mnist":
        return []
    paths: list[Path] = []
    for base in (root, _env_root()):
        if base:
            b = Path(base).expanduser()
            paths += [b, b / "fashion-mnist", b / "FashionMNIST" / "raw"]
    paths += [Path(p) for p in DEFAULT_SEARCH_DIRS]
    return _dedupe(paths)

